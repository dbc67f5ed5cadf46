#!/usr/bin/env python
"""Convert an MMDetection 3.x checkpoint (.pth) to Detectron2 (.pkl numpy arrays, or .pth).

The reverse of tools/convert_d2_to_mmdet.py, with the same corresponding parts. The Detectron2 layout
(bare trunk / ResNet-FPN detector / C4 detector) follows from the keys, or --layout. A file that came from
Detectron2 gets its original metadata back (round trip bit-identical); a bare trunk is written MoCo-style
(unprefixed names, ``matching_heuristics: True``) so Detectron2 matches it into FPN and C4 models.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from us3l.checkpoint import CheckpointError  # noqa: E402
from us3l.checkpoint.frameworks import (mmdet_meta_to_d2, mmdet_to_d2_state, read_mmdet_checkpoint,  # noqa: E402
                                        write_d2_checkpoint)
from us3l.checkpoint.keymaps import D2_LAYOUTS  # noqa: E402


def convert(src: str, dst: str, layout: str | None = None, num_ratios: int = 3, skip_unmapped_heads: bool = False,
            verbose: bool = True):
    """Convert ``src`` and save ``dst``; returns the :class:`~us3l.checkpoint.frameworks.Conversion`."""
    state, meta = read_mmdet_checkpoint(src)
    out, conv = mmdet_to_d2_state(state, num_ratios=num_ratios, skip_unmapped_heads=skip_unmapped_heads,
                                  layout=layout)
    write_d2_checkpoint(out, mmdet_meta_to_d2(meta, conv.layout), dst)
    print(conv.summary(verbose))
    print(f"saved {dst}")
    return conv


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="MMDetection checkpoint (.pth)")
    p.add_argument("dst", help="output Detectron2 checkpoint (.pkl, or .pth)")
    p.add_argument("--layout", choices=D2_LAYOUTS, help="Detectron2 layout (default: from the keys)")
    p.add_argument("--num-ratios", type=int, default=3, help="anchor aspect ratios per size (default 3)")
    p.add_argument("--skip-unmapped-heads", action="store_true",
                   help="leave out head parameters that have no Detectron2 counterpart (listed)")
    p.add_argument("--quiet", action="store_true", help="do not list every renamed key")
    args = p.parse_args(argv)
    try:
        convert(args.src, args.dst, args.layout, args.num_ratios, args.skip_unmapped_heads, verbose=not args.quiet)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)  # bad input (us3l.cli)


if __name__ == "__main__":
    main()
