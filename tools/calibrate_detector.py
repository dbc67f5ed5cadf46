#!/usr/bin/env python
"""Calibrate the BN statistics of a universally slimmable detector at given widths, stored per width.

    python tools/calibrate_detector.py SRC DST --config CFG --widths 1.0 0.75 0.5 0.25 --num-batches 200 [--opts ...]

A slimmable detector is fine-tuned with batch statistics, so it holds statistics for no width until they are
calibrated here (train-mode forward of backbone and FPN on TRAINING images of the config, no gradients, an
equal-weight average over batches). DST is SRC plus per-width statistics (``running_mean_w0500``...); any
width without them is refused by evaluation and export, never calibrated silently.
"""
from __future__ import annotations

import argparse
import logging
import sys

from us3l.checkpoint import CheckpointError
from us3l.detection.backends import USER_ERRORS, framework_of, load_backend
from us3l.ops import UncalibratedWidthError
from us3l.output_paths import check_output_file


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="slimmable detector checkpoint")
    p.add_argument("dst", help="where to write the calibrated checkpoint (must differ from SRC)")
    p.add_argument("--config", required=True)
    p.add_argument("--widths", type=float, nargs="+", required=True)
    p.add_argument("--num-batches", type=int, required=True,
                   help="training batches per width (at most one pass over the training set: more is capped)")
    p.add_argument("--framework", choices=("d2", "mmdet"), default=None, help="default: from the config's suffix")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides")
    args = p.parse_args(argv)
    if args.num_batches < 1:
        p.error(f"--num-batches must be >= 1, got {args.num_batches}")
    try:
        check_output_file(args.dst, "DST", inputs=[args.src, args.config])  # before the framework reads anything
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S")
        print(f"calibrating widths {args.widths} on {args.num_batches} training batches each", file=sys.stderr)
        backend = load_backend(framework_of(args.config, args.framework))
        out = backend.calibrate(args.src, args.dst, args.config, args.widths, args.num_batches, args.opts)
    except (CheckpointError, UncalibratedWidthError, *USER_ERRORS) as e:
        print(f"error: {e}".splitlines()[0], file=sys.stderr)
        return 2
    used = ", ".join(f"{w:g} ({n} batches)" for w, n in out["widths"].items())
    print(f"calibrated widths {used} -> {out['weights']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
