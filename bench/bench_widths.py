#!/usr/bin/env python
"""Side-by-side CPU forward timing: slimmable vs torchvision vs fixed-width export, as ratios.

All models run in ONE process, interleaved round by round (shuffled order each round) so that machine
load affects them alike; the table reports medians and their ratios. Results go to bench/widths.md.
"""
import argparse
import platform
import random
import statistics
import sys
import time

import torch
import torchvision

import us3l
from us3l.models import us_resnet50


@torch.no_grad()
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--output", default="bench/widths.md")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size)

    tv = torchvision.models.resnet50().eval()
    us = us_resnet50().eval()
    us.load_state_dict(tv.state_dict())
    calib = [torch.randn(4, 3, 64, 64) for _ in range(2)]
    widths = (0.25, 0.5, 0.75)
    for w in widths:
        us3l.calibrate_bn(us, calib, w)
    static = {w: us3l.export_static(us, w) for w in widths}

    def run_us(w):
        def forward():
            us3l.set_width(us, w)
            return us(x)
        return forward

    cases = {"torchvision@1.0": lambda: tv(x), "us@1.0": run_us(1.0)}
    for w in widths:
        cases[f"us@{w}"] = run_us(w)
        cases[f"static@{w}"] = (lambda m: lambda: m(x))(static[w])
    for fn in cases.values():  # warm-up
        fn()
    times = {k: [] for k in cases}
    order = list(cases)
    rng = random.Random(0)
    for _ in range(args.rounds):
        rng.shuffle(order)
        for k in order:
            t0 = time.perf_counter()
            cases[k]()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}

    rows = [("US-R50@1.0 / torchvision R50", med["us@1.0"] / med["torchvision@1.0"], "<= 1.03")]
    for w in widths:
        rows.append((f"US-R50@{w} / static export@{w}", med[f"us@{w}"] / med[f"static@{w}"], "<= 1.05"))
    rows.append(("US-R50@0.25 / US-R50@1.0", med["us@0.25"] / med["us@1.0"], "<= 0.15"))

    cmd = "python " + " ".join(sys.argv)
    lines = [f"# Slimmable ResNet-50 forward cost on CPU (batch {args.batch_size}, {args.image_size} px)", "",
             f"Command: `{cmd}`  ", f"Machine: {platform.processor() or platform.machine()}, "
             f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} interleaved rounds.", "",
             "| model | median ms |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in med.items()]
    lines += ["", "| ratio | measured | target | met |", "|---|---|---|---|"]
    for name, r, target in rows:
        lines.append(f"| {name} | {r:.3f} | {target} | {'yes' if r <= float(target[3:]) else 'no'} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
