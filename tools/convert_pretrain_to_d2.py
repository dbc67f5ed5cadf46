#!/usr/bin/env python
"""Convert a US3L backbone (ours, or the reference code's pre-training / calibration / fixed-width file) to a
Detectron2 .pkl.

    python tools/convert_pretrain_to_d2.py SRC DST.pkl

ONE full-width file serves every width: the detector's width is chosen in its config
(``MODEL.US3L.WIDTH_MULT``) and ``us3l.d2.US3LCheckpointer`` slices the tensors and picks the calibrated BN
statistics when the model is built. A fixed-width file (the reference's ``..._for_detection.pth.tar``)
loads at its own width only. Any backbone key that cannot be mapped is an error; keys left out on purpose
(projector, EMA encoder, predictors) are listed.
"""
from __future__ import annotations

import sys

from us3l.checkpoint.d2_format import convert_backbone_to_d2, describe_d2_backbone
from us3l.convert_cli import backbone_converter_parser, convert_backbone


def main(argv=None) -> int:
    p = backbone_converter_parser(__doc__, "US3L pre-training/backbone checkpoint or a reference-code checkpoint",
                                  "output Detectron2 weights, ending in .pkl")
    args = p.parse_args(argv)
    usage = f"wrote {args.dst}; use it with MODEL.WEIGHTS {args.dst} MODEL.US3L.WIDTH_MULT <width>"
    return convert_backbone(convert_backbone_to_d2, args, lambda payload: f"{describe_d2_backbone(payload)}\n{usage}")


if __name__ == "__main__":
    sys.exit(main())
