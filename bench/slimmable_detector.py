#!/usr/bin/env python
"""Whole-detector CPU latency and GFLOPs per width of ONE slimmable Detectron2 detector, neck and heads slimmed
vs kept at full width (``MODEL.US3L.SLIM_NECK_HEADS``).

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python bench/slimmable_detector.py --output bench/slimmable_detector.md

Both detectors are built from the same config with the same seed; BN is calibrated at every width on a few
random images (statistics do not change the cost). Inference on one image of ``--size H W`` with
``SCORE_THRESH_TEST 0`` so that every width runs the mask head on the same number of detections
(``DETECTIONS_PER_IMAGE``). Timed runs are interleaved (each round times every (mode, width) once, in a
rotating order) so that load from other processes hits all cells alike; the table gives medians and the
ratio to width 1.0 of the same mode. GFLOPs: fvcore on the same image (one multiply-add = one flop).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
from bench_report import write_report

import us3l
import us3l.d2  # noqa: F401  (registers the slimmable components)
from us3l.d2 import load_config
from us3l.d2.detector_tools import backbone_gflops, detector_gflops
from us3l.detection import calibrate_detector

DEFAULT_CONFIG = "projects/segmentation/configs/mask_rcnn_US-R50_FPN_slimmable_1x.yaml"


def build(config: str, slim: bool, widths, size, seed: int, opts):
    from detectron2.modeling import build_model

    cfg = load_config(config, ["MODEL.DEVICE", "cpu", "MODEL.RESNETS.NORM", "BN", "MODEL.FPN.NORM", "BN",
                               "MODEL.US3L.SLIM_NECK_HEADS", str(slim), "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
                               "MODEL.WEIGHTS", "", *opts])
    torch.manual_seed(seed)
    model = build_model(cfg)
    padded = [-(-s // 32) * 32 for s in size]  # what preprocess_image pads to (FPN size divisibility)
    images = [torch.randn(1, 3, *padded) for _ in range(2)]
    calibrate_detector(model, model.backbone, images, widths)
    return cfg, model.eval()


@torch.no_grad()
def time_once(model, width, batch) -> float:
    us3l.set_width(model, width)
    t0 = time.perf_counter()
    model(batch)
    return (time.perf_counter() - t0) * 1e3


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--widths", type=float, nargs="+", default=[1.0, 0.75, 0.5, 0.25])
    p.add_argument("--size", type=int, nargs=2, default=[512, 683], metavar=("H", "W"))
    p.add_argument("--runs", type=int, default=5, help="timed rounds (each times every cell once)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=None, help="markdown file (a .json twin is written beside it)")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[])
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    widths = sorted(set(args.widths), reverse=True)
    models = {}
    for slim in (True, False):
        cfg, models[slim] = build(args.config, slim, widths, args.size, args.seed, args.opts)
    image = torch.rand(3, *args.size) * 255
    batch = [{"image": image, "height": args.size[0], "width": args.size[1]}]
    cells = [(slim, w) for slim in (True, False) for w in widths]
    flops = {}
    for slim, w in cells:
        us3l.set_width(models[slim], w)
        flops[(slim, w)] = (detector_gflops(models[slim], batch), backbone_gflops(models[slim], batch))
    for slim, w in cells:  # warm-up
        time_once(models[slim], w, batch)
    times = {c: [] for c in cells}
    load = []
    for r in range(args.runs):
        order = cells[r % len(cells):] + cells[: r % len(cells)]
        for c in order:
            times[c].append(time_once(models[c[0]], c[1], batch))
        load.append(os.getloadavg()[0])
    med = {c: statistics.median(v) for c, v in times.items()}
    rows = []
    for slim, w in cells:
        rows.append({"neck_heads": "slimmed" if slim else "full", "width": w, "latency_ms": med[(slim, w)],
                     "latency_ratio": med[(slim, w)] / med[(slim, 1.0)] if 1.0 in widths else None,
                     "latency_min_ms": min(times[(slim, w)]), "latency_max_ms": max(times[(slim, w)]),
                     "detector_gflops": flops[(slim, w)][0], "backbone_gflops": flops[(slim, w)][1],
                     "gflops_ratio": flops[(slim, w)][0] / flops[(slim, 1.0)][0] if 1.0 in widths else None})
    meta = {"config": args.config, "size": args.size, "runs": args.runs, "threads": args.threads,
            "load_avg_during_runs": [round(x, 2) for x in load], "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "opts": args.opts}
    lines = ["| neck + heads | width | detector GFLOPs | ratio to 1.0 | backbone GFLOPs | latency median ms "
             "(min-max) | latency ratio to 1.0 |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['neck_heads']} | {r['width']:.2f} | {r['detector_gflops']:.2f} | {r['gflops_ratio']:.3f} | "
                     f"{r['backbone_gflops']:.2f} | {r['latency_ms']:.0f} ({r['latency_min_ms']:.0f}-"
                     f"{r['latency_max_ms']:.0f}) | {r['latency_ratio']:.3f} |")
    write_report("\n".join(lines), meta, args.output, rows=rows,
                 times_ms={f"{'slim' if s else 'full'}_w{w}": v for (s, w), v in times.items()})


if __name__ == "__main__":
    main()
