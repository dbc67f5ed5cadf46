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

import argparse
import sys

from us3l.checkpoint import CheckpointError, LoadReport
from us3l.checkpoint.d2_format import convert_backbone_to_d2, describe_d2_backbone


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", help="US3L pre-training/backbone checkpoint or a reference-code checkpoint")
    parser.add_argument("dst", help="output Detectron2 weights, ending in .pkl")
    parser.add_argument("--src-width", type=float, default=None,
                        help="width of a reference calibration / fixed-width file whose name does not say it")
    args = parser.parse_args(argv)
    report = LoadReport()
    try:
        payload = convert_backbone_to_d2(args.src, args.dst, width=args.src_width, report=report)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(f"  dropped: {k}" for k in report.dropped))
    print(describe_d2_backbone(payload))
    print(f"wrote {args.dst}; use it with MODEL.WEIGHTS {args.dst} MODEL.US3L.WIDTH_MULT <width>")
    return 0


if __name__ == "__main__":
    sys.exit(main())
