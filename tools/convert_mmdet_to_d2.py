#!/usr/bin/env python
"""Convert an MMDetection 3.x checkpoint (.pth) to Detectron2 (.pkl numpy arrays, or .pth).

The reverse of tools/convert_d2_to_mmdet.py, with the same corresponding parts. The Detectron2 layout
(bare trunk / ResNet-FPN detector / C4 detector) follows from the keys, or --layout. A file that came from
Detectron2 gets its original metadata back (round trip bit-identical); a bare trunk is written MoCo-style
(unprefixed names, ``matching_heuristics: True``) so Detectron2 matches it into FPN and C4 models.
"""
import argparse
import sys

from us3l.checkpoint import CheckpointError
from us3l.cli import BAD_INPUT, error_line
from us3l.checkpoint.frameworks import convert_mmdet_to_d2
from us3l.checkpoint.keymaps import D2_LAYOUTS


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
        conv = convert_mmdet_to_d2(args.src, args.dst, args.layout, args.num_ratios, args.skip_unmapped_heads)
    except CheckpointError as e:
        print(error_line(e), file=sys.stderr)
        sys.exit(BAD_INPUT)
    print(conv.summary(verbose=not args.quiet))
    print(f"saved {args.dst}")


if __name__ == "__main__":
    main()
