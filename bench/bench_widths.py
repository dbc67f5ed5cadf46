#!/usr/bin/env python
"""Inference cost of the slimmable ResNet-50 (eval, no grad) vs the static network of the same width.

  PYTHONPATH=$PWD OMP_NUM_THREADS=1 python bench/bench_widths.py --threads 1 --pairs 12

Pairs are INTERLEAVED: for each comparison the two models run alternately in one loop (A B, then B A, ...),
and the ratio is taken per pair, so that load from other processes hits both sides alike; the table gives
the median ratio and its interquartile range. Each forward is timed by wall clock and by the CPU time of
the calling thread (with one thread, the latter does not count time the OS gave to other processes).
Comparisons: slimmable@w / ``us3l.export_static``@w, and slimmable@1.0 / torchvision ``resnet50``.
Also measured: the cost of switching width (``us3l.set_width`` plus re-slicing the weights on the next
forward) and the memory the slimmable model holds for its grad-free forwards (:mod:`us3l.inference`).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torchvision

import us3l
from us3l.inference import cached_bytes, prepare
from us3l.models import us_resnet50
from us3l.profiling import bench_command, interleaved_ratios, machine_summary, ratio_row, write_report

WIDTHS = (0.25, 0.35, 0.5, 0.75, 0.8)


def switch_cost(model, widths, rounds: int) -> dict:
    """Cost of one width switch: ``us3l.set_width`` plus making the new width's tensors (what the first
    forward after a switch does on top of a steady one; :func:`us3l.inference.prepare` does exactly that)."""
    out = {}
    for w in widths:
        other = 0.75 if w != 0.75 else 0.5
        setw, prep, cpu = [], [], []
        for _ in range(rounds):
            us3l.set_width(model, other)
            prepare(model)
            t0, c0 = time.perf_counter(), time.thread_time()
            us3l.set_width(model, w)
            t1 = time.perf_counter()
            prepare(model)
            t2, c2 = time.perf_counter(), time.thread_time()
            setw.append((t1 - t0) * 1e3)
            prep.append((t2 - t1) * 1e3)
            cpu.append((c2 - c0) * 1e3)
        out[w] = {"set_width_ms": statistics.median(setw), "reslice_ms": statistics.median(prep),
                  "total_ms": statistics.median([s + p for s, p in zip(setw, prep)]),
                  "cpu_ms": statistics.median(cpu)}
    return out


def param_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


@torch.no_grad()
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--pairs", type=int, default=12, help="interleaved pairs per comparison")
    p.add_argument("--switch-rounds", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--widths", type=float, nargs="+", default=list(WIDTHS))
    p.add_argument("--note", default="", help="free text for the table (e.g. machine load)")
    p.add_argument("--output", default="bench/widths.md")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size)

    tv = torchvision.models.resnet50().eval()
    us = us_resnet50().eval()
    us.load_state_dict(tv.state_dict())
    calib = [torch.randn(4, 3, 64, 64) for _ in range(2)]
    for w in sorted(set(args.widths) | {0.25, 0.5, 0.75}):  # the switch measurement uses 0.25/0.5/0.75
        us3l.calibrate_bn(us, calib, w)
    load0 = os.getloadavg()[0]

    rows = []
    us3l.set_width(us, 1.0)
    r = interleaved_ratios(lambda: us(x), lambda: tv(x), args.pairs)
    rows.append(("US-R50@1.0 / torchvision R50", r))
    held = {}
    for w in args.widths:
        static = us3l.export_static(us, w)
        us3l.set_width(us, w)
        r = interleaved_ratios(lambda: us(x), lambda s=static: s(x), args.pairs)
        rows.append((f"US-R50@{w} / static export@{w}", r))
        held[w] = (cached_bytes(us), param_bytes(static))
        del static
    switch = switch_cost(us, (0.25, 0.5, 1.0), args.switch_rounds)
    load1 = os.getloadavg()[0]

    cmd = bench_command()
    lines = [f"# Slimmable ResNet-50 inference vs static networks (CPU, eval, no grad, batch {args.batch_size}, "
             f"{args.image_size} px)", "", f"Command: `{cmd}`  ",
             f"Machine: {machine_summary()}, "
             f"{torch.get_num_threads()} thread(s) for both sides, {args.pairs} interleaved pairs per row; "
             f"load average {load0:.1f} at start, {load1:.1f} at end. {args.note}", "",
             "Ratio = slimmable / reference per interleaved pair; median [interquartile range]. "
             "Target: median <= 1.02.", "",
             "| comparison | wall ratio | thread-CPU ratio | slimmable ms | reference ms | met (wall / CPU) |",
             "|---|---|---|---|---|---|"]
    lines += [ratio_row(name, r, 1.02, scale=1e3, digits=1) for name, r in rows]
    lines += ["", "Width switch (ResNet-50 from width 0.75, or 0.5 for 0.75; median of "
              f"{args.switch_rounds}): `us3l.set_width` plus making the new width's tensors "
              "(`us3l.inference.prepare`, which is what the first forward after a switch adds):",
              "", "| to width | set_width ms | re-slicing ms | total ms per switch (wall) | total thread-CPU ms |",
              "|---|---|---|---|---|"]
    lines += [f"| {w} | {s['set_width_ms']:.2f} | {s['reslice_ms']:.2f} | {s['total_ms']:.2f} | {s['cpu_ms']:.2f} |"
              for w, s in switch.items()]
    lines += ["", "Memory held for grad-free forwards after running at a width (one contiguous weight copy per "
              "input-sliced conv/linear, for the last width only) vs the parameters of the static export:", "",
              "| width | held MB | static export params MB |", "|---|---|---|"]
    lines += [f"| {w} | {h / 2**20:.1f} | {s / 2**20:.1f} |" for w, (h, s) in held.items()]
    write_report(lines, args.output)


if __name__ == "__main__":
    main()
