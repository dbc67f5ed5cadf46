#!/usr/bin/env python
"""Convert an MMDetection 3.x checkpoint (.pth) to Detectron2 (.pkl numpy arrays, or .pth).

The reverse of tools/convert_d2_to_mmdet.py, with the same corresponding parts. The Detectron2 layout
(bare trunk / ResNet-FPN detector / C4 detector) follows from the keys, or --layout. A file that came from
Detectron2 gets its original metadata back (round trip bit-identical); a bare trunk is written MoCo-style
(unprefixed names, ``matching_heuristics: True``) so Detectron2 matches it into FPN and C4 models.
"""
import sys

from us3l.checkpoint.frameworks import convert_mmdet_to_d2
from us3l.checkpoint.keymaps import D2_LAYOUTS
from us3l.convert_cli import convert_detector, detector_converter_parser


def main(argv=None) -> int:
    p = detector_converter_parser(__doc__, "MMDetection checkpoint (.pth)",
                                  "output Detectron2 checkpoint (.pkl, or .pth)", "Detectron2")
    p.add_argument("--layout", choices=D2_LAYOUTS, help="Detectron2 layout (default: from the keys)")
    args = p.parse_args(argv)
    return convert_detector(convert_mmdet_to_d2, args, source="mmdet", layout=args.layout)


if __name__ == "__main__":
    sys.exit(main())
