#!/usr/bin/env python
"""Convert a US3L backbone (ours, or the reference code's pre-training / calibration / fixed-width file) to an
MMDetection backbone file.

Writes ``dict(state_dict={'backbone.<torchvision names>': full-width tensors, incl. per-width BN statistics},
meta={arch, width_range, calibrated_widths, ...})``: ONE file that ``US3LResNet`` / ``US3LResLayer`` load
at any width of the range (``init_cfg=dict(type='Pretrained', checkpoint=DST, prefix='backbone.')``).
Keys left out on purpose (projector, EMA encoder, predictors) are listed.
"""
import argparse
import sys

from us3l.checkpoint import CheckpointError, LoadReport
from us3l.checkpoint.mmdet_format import convert_backbone_to_mmdet


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="US3L pre-training, backbone or reference-code checkpoint")
    p.add_argument("dst", help="output .pth for MMDetection")
    p.add_argument("--src-width", type=float, default=None,
                   help="width of a reference calibration / fixed-width file whose name does not say it")
    p.add_argument("--quiet", action="store_true", help="do not list the keys left out")
    args = p.parse_args(argv)
    report = LoadReport()
    try:
        meta = convert_backbone_to_mmdet(args.src, args.dst, width=args.src_width, report=report)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not args.quiet:
        print("\n".join(f"  dropped: {k}" for k in report.dropped))
    print(f"{meta['arch']} backbone (width range {meta['width_range']}, calibrated widths "
          f"{meta['calibrated_widths'] or 'none'}) -> {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
