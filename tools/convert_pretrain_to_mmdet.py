#!/usr/bin/env python
"""Convert a US3L backbone (ours, or the reference code's pre-training / calibration / fixed-width file) to an
MMDetection backbone file.

Writes ``dict(state_dict={'backbone.<torchvision names>': full-width tensors, incl. per-width BN statistics},
meta={arch, width_range, calibrated_widths, ...})``: ONE file that ``US3LResNet`` / ``US3LResLayer`` load
at any width of the range (``init_cfg=dict(type='Pretrained', checkpoint=DST, prefix='backbone.')``).
Keys left out on purpose (projector, EMA encoder, predictors) are listed.
"""
import sys

from us3l.checkpoint.mmdet_format import convert_backbone_to_mmdet, describe_mmdet_backbone
from us3l.convert_cli import backbone_converter_parser, convert_backbone


def main(argv=None) -> int:
    p = backbone_converter_parser(__doc__, "US3L pre-training, backbone or reference-code checkpoint",
                                  "output .pth for MMDetection")
    p.add_argument("--quiet", action="store_true", help="do not list the keys left out")
    args = p.parse_args(argv)
    return convert_backbone(convert_backbone_to_mmdet, args,
                            lambda meta: f"{describe_mmdet_backbone(meta)} -> {args.dst}")


if __name__ == "__main__":
    sys.exit(main())
