#!/usr/bin/env python
"""Print (and optionally save) FLOPs, parameters and CPU latency of a slimmable backbone per width."""
import argparse
import json
import os

import torch

from us3l.cli import exit_with
from us3l.output_paths import check_output_file
from us3l.profiling import profile_width


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--arch", default="resnet50", choices=["resnet18", "resnet50", "mobilenet_v2"])
    p.add_argument("--widths", type=float, nargs="+", default=[1.0, 0.75, 0.5, 0.25])
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--runs", type=int, default=10, help="timed forward passes per width (0: skip latency)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--output", help="write the rows as JSON here")
    args = p.parse_args(argv)
    if args.output:
        check_output_file(args.output, "--output")
    outside = [w for w in args.widths if not 0 < w <= 1]
    if outside:  # a slimmable backbone's widths are fractions of its full width
        raise ValueError(f"--widths {outside}: a width is a fraction of the full backbone, 0 < width <= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [profile_width(args.arch, w, args.image_size, args.batch_size, args.runs) for w in args.widths]
    print(f"| width | GFLOPs (fvcore, 1x3x{args.image_size}^2) | params (M) "
          f"| CPU latency (ms, batch {args.batch_size}) |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['width']:.3g} | {r['gflops']:.3f} | {r['params_m']:.2f} | {r['latency_ms']:.1f} |")
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    exit_with(main)
