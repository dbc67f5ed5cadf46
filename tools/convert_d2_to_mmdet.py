#!/usr/bin/env python
"""Convert a Detectron2 checkpoint (.pkl or .pth) to MMDetection 3.x.

Accepted: a bare ResNet trunk (MoCo / tools/convert_pretrain_to_d2.py style), or a whole Faster/Mask R-CNN
with a ResNet-FPN or C4 backbone. Converted parts (they correspond tensor for tensor, see
``us3l/checkpoint/keymaps.py``): ResNet trunk (C4: res5 -> roi_head.shared_head.layer4), FPN, RPN (anchor
channels reordered when a level has several sizes), 2fc box head, box predictor, 4conv mask head (C4:
deconv + predictor). Any backbone key left unconverted is an error; other heads too, unless
--skip-unmapped-heads. The Detectron2 file's own metadata is kept in ``meta['d2']`` for the way back.
"""
import sys

from us3l.checkpoint.frameworks import convert_d2_to_mmdet
from us3l.convert_cli import convert_detector, detector_converter_parser


def main(argv=None) -> int:
    p = detector_converter_parser(__doc__, "Detectron2 checkpoint (.pkl numpy / .pth torch)", "output MMDetection .pth",
                                  "MMDetection")
    return convert_detector(convert_d2_to_mmdet, p.parse_args(argv), source="d2")


if __name__ == "__main__":
    sys.exit(main())
