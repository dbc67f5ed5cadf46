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
import sys

from us3l.checkpoint import CheckpointError
from us3l.cli import BAD_INPUT, error_line
from us3l.checkpoint.frameworks import convert_d2_to_mmdet


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
        conv = convert_d2_to_mmdet(args.src, args.dst, args.num_ratios, args.skip_unmapped_heads)
    except CheckpointError as e:
        print(error_line(e), file=sys.stderr)
        sys.exit(BAD_INPUT)
    print(conv.summary(verbose=not args.quiet))
    print(f"saved {args.dst}")


if __name__ == "__main__":
    main()
