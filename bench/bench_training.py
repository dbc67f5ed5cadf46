#!/usr/bin/env python
"""Training cost of the slimmable ResNet-50: forward + backward at width w vs a static network of width w.

  PYTHONPATH=$PWD OMP_NUM_THREADS=1 python bench/bench_training.py --threads 1 --pairs 8

Both sides run in train mode with autograd (batch statistics), loss = mean of squared outputs, gradients
set to None before each step (as ``optimizer.zero_grad()`` does). The static side is
``us3l.models.build_static_model`` at w, i.e. the network a fixed-width training would use. Pairs are
interleaved and ratios taken per pair (:func:`us3l.profiling.interleaved_ratios`); target: median <= 1.10.
The slimmable side pays for full-size weight gradients (zeros outside the active slice), which a static
network of width w does not have.
"""
from __future__ import annotations

import argparse
import os
import platform

import torch

import us3l
from us3l.models import build_static_model, us_resnet50
from us3l.profiling import bench_command, interleaved_ratios, ratio_row, write_report


def fwd_bwd(model, x):
    def step():
        for p in model.parameters():
            p.grad = None
        model(x).square().mean().backward()
    return step


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--widths", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    p.add_argument("--note", default="")
    p.add_argument("--output", default="bench/training.md")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    us = us_resnet50(num_classes=0).train()
    load0 = os.getloadavg()[0]
    rows = []
    for w in args.widths:
        static = build_static_model("resnet50", w, num_classes=0).train()
        us3l.set_width(us, w)
        rows.append((w, interleaved_ratios(fwd_bwd(us, x), fwd_bwd(static, x), args.pairs)))
        del static
    load1 = os.getloadavg()[0]

    cmd = bench_command()
    lines = ["# Slimmable ResNet-50 training step (forward + backward) vs a static network of the same width",
             "", f"Command: `{cmd}`  ",
             f"CPU, train mode, batch {args.batch_size}, {args.image_size} px. Machine: {platform.machine()}, "
             f"{os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} thread(s) for both "
             f"sides, {args.pairs} interleaved pairs per row; load average {load0:.1f} at start, {load1:.1f} at "
             f"end. {args.note}", "",
             "Ratio = slimmable / static per interleaved pair; median [interquartile range]. Target: median <= 1.10.",
             "", "| width | wall ratio | thread-CPU ratio | slimmable s | static s | met (wall / CPU) |",
             "|---|---|---|---|---|---|"]
    lines += [ratio_row(w, r, 1.10) for w, r in rows]
    write_report(lines, args.output)


if __name__ == "__main__":
    main()
