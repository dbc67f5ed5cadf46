#!/usr/bin/env python
"""Deployed latency per width: the plain detectors that ``tools/export_detector.py`` writes from ONE slimmable
Detectron2 Mask R-CNN, run in PyTorch and (their ONNX graphs, ``--onnx``) in onnxruntime's CPU provider.

    PYTHONPATH=$PWD python bench/deploy.py --output bench/deploy.md [--size 512 683] [--runs 5] [--threads 1 2]

The slimmable detector is built from ``--config`` with random weights (seed 0); BN is calibrated at every width on
random images (statistics do not change the cost); each width is exported as a plain detector and that as ONNX,
through the same functions as the tools. Inference on one ``--size H W`` image with ``SCORE_THRESH_TEST 0``, so
that every width and runtime runs the mask head on ``DETECTIONS_PER_IMAGE`` detections; a call is the deployed
call: ``model([input])`` in PyTorch, :class:`us3l.d2.onnx_export.OnnxDetector` in onnxruntime, both with
Detectron2's post-processing (box rescale, mask pasting). Per thread count, timed rounds are interleaved (each
round times every (runtime, width) cell once, in a rotating order, after one warm-up round) so that load from
other processes hits all cells alike; the table gives medians, the ratio to width 1.0 of the same runtime and
threads, and onnxruntime / PyTorch at the same width and threads. GFLOPs: fvcore on the same image.
"""
from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import sys
import tempfile
import time

import torch
from bench_report import write_report

DEFAULT_CONFIG = "projects/segmentation/configs/mask_rcnn_US-R50_FPN_slimmable_1x.yaml"
# BN in place of SyncBN (one CPU process; the same cost at inference), every detection kept
OPTS = ["MODEL.RESNETS.NORM", "BN", "MODEL.FPN.NORM", "BN", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]


def export_widths(config: str, widths, size, folder: str, opts) -> dict:
    """``{width: (plain weights, plain config, onnx)}`` of one randomly initialised, calibrated slimmable detector."""
    from slimmable_detector import build  # the same detector, seed and calibration as that benchmark's

    from us3l.d2 import detector_tools

    _, model = build(config, True, widths, size, 0, opts)
    src = os.path.join(folder, "slimmable.pth")
    detector_tools.save_slimmable_detector(model, src)
    files = {}
    for w in widths:
        weights = os.path.join(folder, f"plain_w{w:g}.pth")
        out = detector_tools.export(src, weights, w, config, opts)
        onnx_path = os.path.join(folder, f"plain_w{w:g}.onnx")
        detector_tools.export_onnx(out["weights"], out["config"], onnx_path)
        files[w] = (out["weights"], out["config"], onnx_path)
    return files


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--widths", type=float, nargs="+", default=[1.0, 0.75, 0.5, 0.25])
    p.add_argument("--size", type=int, nargs=2, default=[512, 683], metavar=("H", "W"))
    p.add_argument("--runs", type=int, default=5, help="timed rounds per thread count (each times every cell once)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count()])
    p.add_argument("--output", default=None, help="markdown file (a .json twin is written beside it)")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[])
    args = p.parse_args(argv)

    import us3l.d2  # noqa: F401  (registers the components)
    from us3l.d2.detector_tools import detector_gflops
    from us3l.d2.onnx_export import OnnxDetector, load_plain_detector

    widths = sorted(set(args.widths), reverse=True)
    image = torch.rand(3, *args.size, generator=torch.Generator().manual_seed(0)) * 255
    batch = [{"image": image, "height": args.size[0], "width": args.size[1]}]
    opts = OPTS + args.opts
    times, load, flops = {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="us3l_bench_deploy_") as folder:
        t0 = time.time()
        files = export_widths(args.config, widths, args.size, folder, opts)
        export_s = time.time() - t0
        models = {w: load_plain_detector(f[0], f[1])[0] for w, f in files.items()}
        for w, m in models.items():
            flops[w] = detector_gflops(m, batch)
        for threads in args.threads:
            torch.set_num_threads(threads)
            calls = {}
            for w in widths:
                calls[("torch", w)] = functools.partial(models[w], batch)
                calls[("onnxruntime", w)] = functools.partial(OnnxDetector(files[w][2], threads), batch)
            cells = list(calls)
            with torch.no_grad():
                for c in cells:  # warm-up
                    calls[c]()
                per = {c: [] for c in cells}
                load[threads] = []
                for r in range(args.runs):
                    for c in cells[r % len(cells):] + cells[: r % len(cells)]:
                        t = time.perf_counter()
                        calls[c]()
                        per[c].append(1e3 * (time.perf_counter() - t))
                    load[threads].append(round(os.getloadavg()[0], 2))
            for (runtime, w), v in per.items():
                times[(threads, runtime, w)] = v
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = []
    for threads in args.threads:
        for runtime in ("torch", "onnxruntime"):
            for w in widths:
                k = (threads, runtime, w)
                rows.append({"threads": threads, "runtime": runtime, "width": w, "latency_ms": med[k],
                             "latency_min_ms": min(times[k]), "latency_max_ms": max(times[k]),
                             "latency_ratio": med[k] / med[(threads, runtime, widths[0])],
                             "ort_over_torch": med[(threads, "onnxruntime", w)] / med[(threads, "torch", w)],
                             "detector_gflops": flops[w], "gflops_ratio": flops[w] / flops[widths[0]]})
    import onnxruntime

    meta = {"command": " ".join(["python", "bench/deploy.py", *(argv if argv is not None else sys.argv[1:])]),
            "config": args.config, "opts": opts, "size": args.size, "runs": args.runs, "threads": args.threads,
            "load_avg_during_runs": {str(k): v for k, v in load.items()}, "export_seconds": round(export_s, 1),
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__}
    lines = [f"| threads | runtime | width | detector GFLOPs | GFLOPs ratio to {widths[0]:g} | latency median ms "
             f"(min-max) | latency ratio to {widths[0]:g} | onnxruntime / torch |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['threads']} | {r['runtime']} | {r['width']:.2f} | {r['detector_gflops']:.2f} | "
                     f"{r['gflops_ratio']:.3f} | {r['latency_ms']:.0f} ({r['latency_min_ms']:.0f}-"
                     f"{r['latency_max_ms']:.0f}) | {r['latency_ratio']:.3f} | {r['ort_over_torch']:.2f} |")
    write_report("\n".join(lines), meta, args.output, rows=rows,
                 times_ms={f"t{t}_{rt}_w{w:g}": v for (t, rt, w), v in times.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
