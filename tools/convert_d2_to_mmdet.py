#!/usr/bin/env python
"""Convert a Detectron2 checkpoint (.pkl or .pth) to MMDetection 3.x.

Accepted: a bare ResNet trunk (MoCo / tools/convert_pretrain_to_d2.py style), or a whole Faster/Mask R-CNN
with a ResNet-FPN or C4 backbone. Converted parts (they correspond tensor for tensor, see
``us3l/checkpoint/keymaps.py``): ResNet trunk (C4: res5 -> roi_head.shared_head.layer4), FPN, RPN (anchor
channels reordered when a level has several sizes), 2fc box head, box predictor, 4conv mask head (C4:
deconv + predictor). Any backbone key left unconverted is an error; other heads too, unless
--skip-unmapped-heads. The Detectron2 file's own metadata is kept in ``meta['d2']`` for the way back.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from us3l.checkpoint import CheckpointError  # noqa: E402
from us3l.checkpoint.frameworks import (d2_meta_to_mmdet, d2_to_mmdet_state, read_d2_checkpoint,  # noqa: E402
                                        write_mmdet_checkpoint)


def convert(src: str, dst: str, num_ratios: int = 3, skip_unmapped_heads: bool = False, verbose: bool = True):
    """Convert ``src`` and save ``dst``; returns the :class:`~us3l.checkpoint.frameworks.Conversion`."""
    state, extras = read_d2_checkpoint(src)
    out, conv = d2_to_mmdet_state(state, num_ratios=num_ratios, skip_unmapped_heads=skip_unmapped_heads)
    write_mmdet_checkpoint(out, d2_meta_to_mmdet(extras, conv.layout), dst)
    print(conv.summary(verbose))
    print(f"saved {dst}")
    return conv


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="Detectron2 checkpoint (.pkl numpy / .pth torch)")
    p.add_argument("dst", help="output MMDetection .pth")
    p.add_argument("--num-ratios", type=int, default=3, help="anchor aspect ratios per size (default 3)")
    p.add_argument("--skip-unmapped-heads", action="store_true",
                   help="leave out head parameters that have no MMDetection counterpart (listed)")
    p.add_argument("--quiet", action="store_true", help="do not list every renamed key")
    args = p.parse_args(argv)
    try:
        convert(args.src, args.dst, args.num_ratios, args.skip_unmapped_heads, verbose=not args.quiet)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)  # bad input (us3l.cli)


if __name__ == "__main__":
    main()
