#!/usr/bin/env python
"""Table-1-style summary of several pre-training runs evaluated per width: markdown table and plot.

Reads, for each method ``m`` under ``OUT``: ``m.eval.json`` (``tools/eval_ssl.py``) and the run folder ``m/``
of ``tools/pretrain.py`` (``summary.json``, and ``log.txt`` where the collapse metric is logged every
``train.log_every`` iterations). A method without a run folder (e.g. ``random_init``) is a reference row.
Writes ``OUT/table1.md`` and ``OUT/table1.png`` (linear probe per width, and the smallest width's collapse
metric over training).

  python tools/ssl_table.py results/ssl_table1 simsiam_naive simsiam_inplace us3l random_init
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys

from us3l.cli import exit_with
from us3l.output_paths import check_output_file

WIDTHS = (1.0, 0.75, 0.5, 0.25)
_LOG_LINE = re.compile(r"\bit (\d+)/\d+ .*?collapse/max=([0-9.]+).*collapse/min=([0-9.]+)")


def collapse_curve(log_path: str) -> list[tuple[int, float, float]]:
    """(iteration, collapse/max, collapse/min) from a pre-training log; empty when there is no log."""
    if not os.path.exists(log_path):
        return []
    with open(log_path) as f:
        return [(int(m[1]), float(m[2]), float(m[3])) for m in map(_LOG_LINE.search, f) if m]


def load_run(out: str, method: str) -> dict | None:
    path = os.path.join(out, f"{method}.eval.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            rows = {r["width"]: r for r in json.load(f)["rows"]}
    except (ValueError, KeyError, TypeError) as e:  # not JSON, or not tools/eval_ssl.py's
        raise ValueError(f"{path} is not a tools/eval_ssl.py result ({type(e).__name__}: {e})") from None
    summary = {}
    summary_path = os.path.join(out, method, "summary.json")
    if os.path.exists(summary_path):
        with open(summary_path) as f:
            summary = json.load(f)
    return {"rows": rows, "summary": summary, "curve": collapse_curve(os.path.join(out, method, "log.txt"))}


def markdown(runs: dict) -> str:
    lines = ["| method | " + " | ".join(f"{w}x kNN / lin" for w in WIDTHS)
             + " | feature spread 1.0x / 0.25x | train collapse, last (max / min) | train collapse, lowest (max / min)"
             " | train time (s) |", "|---" * 9 + "|"]
    for m, r in runs.items():
        if r is None:
            lines.append(f"| {m} | (missing) |" + " |" * 7)
            continue
        rows, curve = r["rows"], r["curve"]
        cells = [f"{rows[w]['knn_top1']:.1f} / {rows[w]['linear_top1']:.1f}" for w in WIDTHS]
        last = lowest = "-"
        if curve:
            last = f"{curve[-1][1]:.2f} / {curve[-1][2]:.2f}"
            lowest = f"{min(c[1] for c in curve):.2f} / {min(c[2] for c in curve):.2f}"
        wall = r["summary"].get("wall_s")
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {rows[1.0]['feature_spread']:.3f} / "
                     f"{rows[0.25]['feature_spread']:.3f} | {last} | {lowest} | "
                     f"{'-' if wall is None else f'{wall:.0f}'} |")
    return "\n".join(lines) + "\n"


def plot(runs: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_col) = plt.subplots(1, 2, figsize=(10, 3.8))
    for m, r in runs.items():
        if r is None:
            continue
        style = "-" if r["curve"] else "--"  # dashed: a reference row without training (random init)
        ax_acc.plot(WIDTHS, [r["rows"][w]["linear_top1"] for w in WIDTHS], style, marker="o", label=m)
        if r["curve"]:
            ax_col.plot([c[0] for c in r["curve"]], [c[2] for c in r["curve"]], label=m)
    ax_acc.set(xlabel="width", ylabel="linear probe top-1 (%)", title="accuracy per width")
    ax_acc.invert_xaxis()
    ax_col.set(xlabel="iteration", ylabel="collapse metric, smallest width", title="collapse monitor (0 = collapsed)",
               ylim=(0, 1.05))
    for ax in (ax_acc, ax_col):
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="folder holding <method>.eval.json, <method>.train.log, <method>/summary.json")
    ap.add_argument("methods", nargs="+")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)
    # OUT is read and written: both outputs checked before any method's files are read
    check_output_file(os.path.join(args.out, "table1.md"), "OUT/table1.md")
    if not args.no_plot:
        check_output_file(os.path.join(args.out, "table1.png"), "OUT/table1.png")
    runs = {m: load_run(args.out, m) for m in args.methods}
    if all(r is None for r in runs.values()):
        print(f"error: no <method>.eval.json for {args.methods} in {args.out}", file=sys.stderr)
        return 2
    table = markdown(runs)
    with open(os.path.join(args.out, "table1.md"), "w") as f:
        f.write(table)
    if not args.no_plot:
        plot(runs, os.path.join(args.out, "table1.png"))
    print(table)
    return 0


if __name__ == "__main__":
    exit_with(main)
