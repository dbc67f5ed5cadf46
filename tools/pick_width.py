#!/usr/bin/env python
"""The width to deploy for a budget: one slimmable checkpoint's accuracy / cost Pareto front, measured here.

    python tools/pick_width.py CHECKPOINT --config CFG [--results RESULTS.json] (--latency-ms X | --gflops G)
        [--runtime onnxruntime|torch] [--threads N] [--widths 1.0 0.75 0.5 0.25] [--export DST [--onnx]]
        [--opts ...]

Accuracy per width comes from ``--results`` (the ``results.json`` that ``tools/eval_widths.py`` wrote for this
checkpoint) or, without it, from evaluating the widths here (each must be calibrated:
tools/calibrate_detector.py). Cost: ``--gflops`` reads the whole detector's GFLOPs on a test image; ``--latency-ms``
exports each width's plain detector into a temporary folder (and its ONNX graph for ``--runtime onnxruntime``)
and times it on the first test image on THIS machine with ``--threads`` threads (median of ``--runs``).
Prints every width with its cost and whether it is on the Pareto front, names the most accurate width that fits
(at equal accuracy, the cheaper), and with ``--export DST`` writes that plain detector (``--onnx``: and
DST with .onnx). A budget no width meets: exit 2, naming the cheapest width and its cost.
"""
from __future__ import annotations

import argparse
import os
import tempfile

from us3l.cli import exit_with
from us3l.output_paths import check_output_file


def _results_rows(path: str, widths) -> list[dict]:
    """The rows of the ``results.json`` tools/eval_widths.py wrote (format checked), limited to ``widths``."""
    from us3l.pipeline.results_table import load_results

    rows = load_results(path)["rows"]
    if widths:
        rows = [r for r in rows if any(abs(r["width"] - w) < 1e-9 for w in widths)]
    if not rows:
        raise ValueError(f"--results {path}: no row for the widths {widths}")
    return rows


def _latencies(backend, framework: str, args, rows: list[dict], opts) -> None:
    from us3l.detection.backends import export_config_path

    with tempfile.TemporaryDirectory(prefix="us3l_pick_width_") as tmp:
        for row in rows:
            w = row["width"]
            weights = os.path.join(tmp, f"plain_w{w:g}.pth")
            backend.export(args.checkpoint, weights, w, args.config, opts)
            config = export_config_path(weights, framework)
            onnx_path = None
            if args.runtime == "onnxruntime":
                onnx_path = os.path.join(tmp, f"plain_w{w:g}.onnx")
                backend.export_onnx(weights, config, onnx_path)
            row["latency_ms"] = backend.deployed_latency_ms(weights, config, args.runtime, args.threads, args.runs,
                                                            onnx_path=onnx_path)
            print(f"width {w:g}: {row['latency_ms']:.1f} ms ({args.runtime}, {args.threads or 'default'} threads)",
                  flush=True)


def _table(rows: list[dict], front: list[dict], cost: str, unit: str, budget: float, chosen: dict | None) -> str:
    def fmt(v):
        return "-" if v is None else f"{v:.1f}"

    lines = [f"| width | box AP | mask AP | {unit} | Pareto front | fits {budget:g} |",
             "|---:|---:|---:|---:|:---:|:---:|"]
    for r in sorted(rows, key=lambda r: -r["width"]):
        mark = "**" if r is chosen else ""
        lines.append(f"| {mark}{r['width']:.2f}{mark} | {fmt(r.get('box_AP'))} | {fmt(r.get('mask_AP'))} | "
                     f"{r[cost]:.4g} | {'yes' if any(r is f for f in front) else ''} | "
                     f"{'yes' if r[cost] <= budget else 'no'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="slimmable detector checkpoint with calibrated widths")
    p.add_argument("--config", required=True, help="its config (.yaml Detectron2, .py MMDetection)")
    p.add_argument("--framework", choices=("d2", "mmdet"), default=None, help="default: from the config's suffix")
    p.add_argument("--results", help="tools/eval_widths.py results.json of this checkpoint (default: evaluate here)")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--latency-ms", type=float, help="latency budget of one image, measured on this machine")
    budget.add_argument("--gflops", type=float, help="whole-detector GFLOPs budget")
    p.add_argument("--runtime", choices=("torch", "onnxruntime"), default="torch", help="for --latency-ms")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for --latency-ms (default: the runtime's)")
    p.add_argument("--runs", type=int, default=10, help="timed calls per width for --latency-ms (median)")
    p.add_argument("--widths", type=float, nargs="+", default=None,
                   help="candidate widths (default: the rows of --results, else 1.0 0.75 0.5 0.25)")
    p.add_argument("--export", metavar="DST", help="write the chosen width's plain detector (config beside it)")
    p.add_argument("--onnx", action="store_true", help="with --export: also DST with .onnx")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides")
    args = p.parse_args(argv)
    framework = _check_args(args)

    from us3l.detection.backends import load_backend
    from us3l.detection.width_choice import pareto_front, pick

    backend = load_backend(framework)
    if args.results:
        rows = _results_rows(args.results, args.widths)
    else:
        with tempfile.TemporaryDirectory(prefix="us3l_pick_width_eval_") as tmp:
            rows = backend.evaluate(args.checkpoint, args.config, args.widths or [1.0, 0.75, 0.5, 0.25], tmp,
                                    args.opts, profile=args.gflops is not None)
    if args.gflops is not None:
        cost, unit, limit = "detector_gflops", "GFLOPs", args.gflops
        if any(r.get(cost) is None for r in rows):
            raise ValueError(f"--results {args.results}: rows without detector_gflops (rerun tools/eval_widths.py)")
    else:
        cost, unit, limit = "latency_ms", "ms", args.latency_ms
        _latencies(backend, framework, args, rows, args.opts)
    front = pareto_front(rows, cost)
    try:
        chosen = pick(rows, cost, limit, unit)
    except ValueError:
        print(_table(rows, front, cost, unit, limit, None))
        raise
    print(_table(rows, front, cost, unit, limit, chosen))
    print(f"chosen: width {chosen['width']:g} (box AP {chosen.get('box_AP')}, {chosen[cost]:.4g} {unit} <= "
          f"{limit:g})")
    if args.export:
        out = backend.export(args.checkpoint, args.export, chosen["width"], args.config, args.opts)
        print(f"exported width {out['width']:g} -> {out['weights']}, config {out['config']}")
        if args.onnx:
            onnx_path = os.path.splitext(args.export)[0] + ".onnx"
            backend.export_onnx(out["weights"], out["config"], onnx_path)
            print(f"ONNX -> {onnx_path}")
    return 0


def _check_args(args) -> str:
    """The framework, once every argument and every output path has been checked (nothing is read or written
    before)."""
    from us3l.detection.backends import export_config_path, framework_of

    if args.onnx and not args.export:
        raise ValueError("--onnx writes the ONNX graph of --export DST: give --export too")
    if (args.latency_ms if args.latency_ms is not None else args.gflops) <= 0:
        raise ValueError("the budget must be positive")
    if args.runs < 1 or (args.threads is not None and args.threads < 1):
        raise ValueError("--runs and --threads must be at least 1")
    framework = framework_of(args.config, args.framework)
    inputs = [args.checkpoint, args.config, *([args.results] if args.results else [])]
    if args.export:  # every file it writes, before any work
        check_output_file(args.export, "--export DST", inputs=inputs)
        check_output_file(export_config_path(args.export, framework), "the config written beside DST", inputs=inputs)
        if args.onnx:
            check_output_file(os.path.splitext(args.export)[0] + ".onnx", "the ONNX file beside DST", inputs=inputs)
    for path, what in ((args.checkpoint, "CHECKPOINT"), (args.config, "--config"), (args.results, "--results")):
        if path and not os.path.isfile(path):
            raise FileNotFoundError(f"{what} not found: {path}")
    return framework


if __name__ == "__main__":
    exit_with(main)
