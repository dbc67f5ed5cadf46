"""Per-width results of ONE run: one JSON (the source of truth) rendered as CSV, markdown and an AP-vs-GFLOPs plot.

Written by per-width evaluation; ``tools/results_table.py`` re-renders a results folder from its
``results.json`` (e.g. after editing the title, or to merge several runs). Several seeds and inits are
summarised by :mod:`us3l.pipeline.summary`.
AP values are COCO AP on the 0-100 scale (Detectron2's convention); missing values are ``None``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
from typing import Dict, Iterable, List, Optional

from ..output_paths import check_output_dir
from ..width import width_text
from . import table_files

FORMAT = "us3l.results/1"
# column key -> header; the order is the table's
COLUMNS = [
    ("width", "width"),
    ("box_AP", "box AP"),
    ("mask_AP", "mask AP"),
    ("box_AP50", "box AP50"),
    ("mask_AP50", "mask AP50"),
    ("detector_gflops", "detector GFLOPs"),
    ("gflops", "backbone GFLOPs"),
    ("params_m", "backbone params (M)"),
    ("latency_ms", "backbone CPU latency (ms)"),
]
_DIGITS = {"width": 3, "gflops": 3, "detector_gflops": 3, "params_m": 2, "latency_ms": 1}


def _clean(v):
    """JSON-safe number: NaN/inf (e.g. AP of an empty evaluation) become None."""
    if v is None:
        return None
    v = float(v)
    return None if math.isnan(v) or math.isinf(v) else v


def normalize_row(row: Dict) -> Dict:
    """A row with every column present (None when unknown), plus any extra keys kept as they are."""
    out = {k: _clean(row.get(k)) for k, _ in COLUMNS}
    out.update({k: v for k, v in row.items() if k not in out})
    if out["width"] is None:
        raise ValueError(f"a results row needs a width: {row}")
    return out


def _fmt(key: str, v) -> str:
    if v is None:
        return "n/a"
    if key == "width":  # 1.00, 0.75, and three decimals only where needed (0.375)
        return width_text(v)
    if isinstance(v, float):
        return f"{v:.{_DIGITS.get(key, 1)}f}"
    return str(v)


def render_markdown(rows: List[Dict], title: str = "", notes: Iterable[str] = ()) -> str:
    return table_files.render_markdown(rows, COLUMNS, _fmt, title, notes)


def plot_ap_vs_gflops(rows: List[Dict], path: str, title: str = "") -> Optional[str]:
    """PNG of box/mask AP against GFLOPs (the whole detector's when every row has them, else the backbone's),
    each point labelled with its width."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xkey = "detector_gflops" if rows and all(r.get("detector_gflops") is not None for r in rows) else "gflops"
    xname = "detector GFLOPs" if xkey == "detector_gflops" else "backbone GFLOPs"
    pts = sorted((r for r in rows if r.get(xkey) is not None), key=lambda r: r[xkey])
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for key, label, marker in (("box_AP", "box AP", "o"), ("mask_AP", "mask AP", "s")):
        xy = [(r[xkey], r[key], r["width"]) for r in pts if r.get(key) is not None]
        if xy:
            ax.plot([p[0] for p in xy], [p[1] for p in xy], marker=marker, label=label)
            for x, y, w in xy:
                ax.annotate(f"{w:g}x", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(xname)
    ax.set_ylabel("COCO AP")
    ax.set_title(title or f"AP vs {xname} (one slimmable backbone)")
    table_files.finish_axes(ax)
    ax.set_ylim(bottom=0)  # after the margins, which it keeps at the top
    return table_files.save_figure(plt, fig, path)


def write_results(rows: List[Dict], out_dir: str, title: str = "", meta: Optional[Dict] = None,
                  notes: Iterable[str] = ()) -> Dict[str, str]:
    """Write ``results.{json,csv,md}`` and ``ap_vs_gflops.png`` into out_dir; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    rows = sorted((normalize_row(r) for r in rows), key=lambda r: -r["width"])
    notes = list(notes)
    doc = {"format": FORMAT, "title": title, "columns": [k for k, _ in COLUMNS], "rows": rows,
           "meta": meta or {}, "notes": notes}
    paths = table_files.write_table_files(out_dir, doc, rows, COLUMNS, lambda k, v: v,
                                          render_markdown(rows, title, notes))
    paths["png"] = plot_ap_vs_gflops(rows, os.path.join(out_dir, "ap_vs_gflops.png"), title)
    return paths


def load_results(path: str) -> Dict:
    """Read a ``results.json`` (a folder holding one is accepted too)."""
    if os.path.isdir(path):
        path = os.path.join(path, "results.json")
    with open(path) as f:
        doc = json.load(f)
    if doc.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} file (format={doc.get('format')!r})")
    return doc


def main(argv=None):
    """Command line of ``tools/results_table.py``."""
    p = argparse.ArgumentParser(description="Re-render (or merge) per-width results.json files as CSV, "
                                "markdown and an AP-vs-GFLOPs plot.")
    p.add_argument("inputs", nargs="+", help="results.json files (or folders holding one); rows are merged")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--title", default=None)
    args = p.parse_args(argv)
    check_output_dir(args.out_dir, "--out-dir")  # before the inputs are read
    docs = [load_results(x) for x in args.inputs]
    rows: Dict[float, Dict] = {}
    for d in docs:  # a later file wins for a width present in several
        rows.update({r["width"]: r for r in d["rows"]})
    title = args.title if args.title is not None else docs[0].get("title", "")
    meta = docs[0].get("meta", {}) if len(docs) == 1 else {"merged_from": [os.path.abspath(x) for x in args.inputs]}
    paths = write_results(list(rows.values()), args.out_dir, title, meta, docs[0].get("notes", []))
    print(render_markdown(sorted(rows.values(), key=lambda r: -r["width"]), title))
    for k, v in paths.items():
        print(f"{k}: {v}")

