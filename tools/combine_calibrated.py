#!/usr/bin/env python
"""Combine per-width calibrated checkpoints of ONE run into one ``us3l.backbone/1`` file.

    python tools/combine_calibrated.py run/checkpoint_width_0.25.pth.tar run/checkpoint_width_0.5.pth.tar \
        run/checkpoint_width_1.0.pth.tar combined.pth

Each source holds the same weights and the BN statistics of its width (the reference code's calibration
worker writes one such file per width; its width is read from the name ``checkpoint_width_{w}``). The
result holds the weights once and every width's statistics; refused if the weights differ.
"""
import argparse
import sys

from us3l.checkpoint import CheckpointError, LoadReport
from us3l.checkpoint.combine import combine_calibrated_files
from us3l.output_paths import OutputPathError, check_output_file


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", nargs="+", help="per-width calibrated checkpoints of one run")
    p.add_argument("dst", help="output us3l.backbone/1 file")
    p.add_argument("--quiet", action="store_true", help="do not list the keys left out")
    args = p.parse_args(argv)
    report = LoadReport()
    try:
        check_output_file(args.dst, "DST", inputs=args.src)
        meta = combine_calibrated_files(args.src, args.dst, report)
    except (CheckpointError, OutputPathError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not args.quiet:
        print("\n".join(f"  dropped: {k}" for k in report.dropped))
    print(f"{meta['arch']}: calibrated widths {meta['calibrated_widths']} -> {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
