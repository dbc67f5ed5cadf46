"""The transfer table's files: per (method, protocol, width) mean and spread over seeds, the frozen probe of the
same backbones beside it, and the reading written from the rows.

``results.json`` = ``{"format", "rows", "probe", "reading", "meta"}``; each row carries ``method``, ``protocol``,
``width``, ``seeds``, ``box_AP_mean`` / ``_std``, ``mask_AP_mean`` / ``_std``, ``detector_gflops``; each probe row
``method``, ``width``, ``seeds``, ``linear_top1_mean`` / ``_std``, ``knn_top1_mean`` / ``_std``.
"""
from __future__ import annotations

import os
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

from . import table_files
from .summary import format_cell, mean_std, summarize
from .transfer_reading import METHODS, PROTOCOLS, claim_summary, reading_lines

FORMAT = "us3l.transfer_table/1"
COLUMNS = [("method", "method"), ("protocol", "protocol"), ("width", "width"), ("box_AP_mean", "box AP"),
           ("box_AP_std", "box AP std"), ("mask_AP_mean", "mask AP"), ("mask_AP_std", "mask AP std"),
           ("detector_gflops", "detector GFLOPs"), ("seeds", "seeds")]
PROBE_COLUMNS = [("method", "method"), ("width", "width"), ("linear_top1_mean", "linear top-1"),
                 ("linear_top1_std", "linear std"), ("knn_top1_mean", "kNN top-1"), ("knn_top1_std", "kNN std"),
                 ("seeds", "seeds")]


def _order(method: str) -> int:
    return METHODS.index(method) if method in METHODS else len(METHODS)


def transfer_rows(runs: Mapping[str, Mapping[str, Mapping[int, Sequence[dict]]]]) -> List[dict]:
    """Rows from ``runs[protocol][method][seed]`` = the per-width rows of that run (``tools/eval_widths.py``);
    an ``individual`` method's runs hold one row per width, one fixed-width detector each."""
    rows = []
    for protocol, by_method in runs.items():
        for r in summarize(by_method):
            r["method"] = r.pop("init")
            r["protocol"] = protocol
            rows.append(r)
    return sorted(rows, key=lambda r: (PROTOCOLS.index(r["protocol"]), _order(r["method"]), -r["width"]))


def probe_rows(probes: Mapping[str, Mapping[int, Sequence[dict]]]) -> List[dict]:
    """Rows from ``probes[method][seed]`` = that backbone's ``tools/eval_ssl.py`` rows (width, linear / kNN)."""
    rows = []
    for method, by_seed in probes.items():
        widths = sorted({float(r["width"]) for rs in by_seed.values() for r in rs}, reverse=True)
        for w in widths:
            got = {s: next(r for r in rs if float(r["width"]) == w) for s, rs in sorted(by_seed.items())
                   if any(float(r["width"]) == w for r in rs)}
            lin = mean_std([r["linear_top1"] for r in got.values()])
            knn = mean_std([r["knn_top1"] for r in got.values()])
            rows.append({"method": method, "width": w, "seeds": sorted(got), "linear_top1_mean": lin[0],
                         "linear_top1_std": lin[1], "knn_top1_mean": knn[0], "knn_top1_std": knn[1]})
    return sorted(rows, key=lambda r: (_order(r["method"]), -r["width"]))


def reading(rows: Sequence[dict]) -> Dict[str, List[str]]:
    """The honest reading per metric: per (protocol, width) US3L against every alternative, then where the
    paper's claim does not hold."""
    return {key: reading_lines(rows, key=key) + claim_summary(rows, key=key) for key in ("box_AP", "mask_AP")
            if any(r.get(f"{key}_mean") is not None for r in rows)}


def render_markdown(rows: List[dict], probe: List[dict], read: Dict[str, List[str]], title: str = "",
                    notes: Iterable[str] = ()) -> str:
    text = table_files.render_markdown(rows, COLUMNS, format_cell, title, notes, left=("method", "protocol"))
    text += "\n## Frozen probe of the same backbones (linear / kNN top-1 %, classification view)\n\n"
    text += table_files.render_markdown(probe, PROBE_COLUMNS, format_cell, left=("method",))
    text += "\n## Reading (written from the rows: a gap counts above twice the larger std)\n\n"
    for lines in read.values():
        text += "".join(f"- {line}\n" for line in lines)
    return text


def _lines(ax, rows, methods, markers, x: str, key: str) -> None:
    """One error-bar line per method: ``key`` mean +- std against ``x``."""
    for m in methods:
        pts = sorted((r for r in rows if r["method"] == m and r.get(f"{key}_mean") is not None), key=lambda r: r[x])
        if pts:
            ax.errorbar([r[x] for r in pts], [r[f"{key}_mean"] for r in pts],
                        yerr=[r[f"{key}_std"] or 0.0 for r in pts], marker=markers[m], capsize=3, label=m)


def plot(rows: List[dict], probe: List[dict], path: str, title: str = "") -> str:
    """AP against whole-detector GFLOPs per protocol (one line per method, error bars = std over seeds), and the
    probe per width of the same backbones beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    protocols = [p for p in PROTOCOLS if any(r["protocol"] == p for r in rows)] or ["frozen"]
    fig, axes = plt.subplots(len(protocols), 3, figsize=(15, 4 * len(protocols)), squeeze=False)
    methods = sorted({r["method"] for r in rows} | {r["method"] for r in probe}, key=_order)
    markers = dict(zip(methods, "osD^vP*X"))
    for i, protocol in enumerate(protocols):
        for ax, key in zip(axes[i][:2], ("box_AP", "mask_AP")):
            _lines(ax, [r for r in rows if r["protocol"] == protocol and r.get("detector_gflops") is not None],
                   methods, markers, "detector_gflops", key)
            ax.set_xlabel("detector GFLOPs (whole detector)")
            ax.set_ylabel(f"COCO {key.replace('_', ' ')} ({protocol}; mean +- std over seeds)")
            table_files.finish_axes(ax)
    for ax, key, label in ((axes[0][2], "linear_top1", "linear probe"),
                           (axes[-1][2] if len(protocols) > 1 else None, "knn_top1", "kNN")):
        if ax is None:
            continue
        _lines(ax, probe, methods, markers, "width", key)
        ax.set_xlabel("width")
        ax.set_ylabel(f"{label} top-1 % (frozen backbone)")
        table_files.finish_axes(ax)
    fig.suptitle(title or "transfer by pre-training method and width")
    return table_files.save_figure(plt, fig, path)


def write_transfer_table(rows: List[dict], probe: List[dict], out_dir: str, title: str = "",
                         meta: Optional[dict] = None, notes: Iterable[str] = ()) -> Dict[str, str]:
    """``results.{json,csv,md}`` and ``ap_vs_gflops.png`` in ``out_dir``; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    notes = list(notes)
    read = reading(rows)
    doc = {"format": FORMAT, "title": title, "columns": [k for k, _ in COLUMNS], "rows": rows, "probe": probe,
           "reading": read, "meta": meta or {}, "notes": notes}
    paths = table_files.write_table_files(
        out_dir, doc, rows, COLUMNS, lambda k, v: " ".join(map(str, v)) if k == "seeds" else v,
        render_markdown(rows, probe, read, title, notes))
    paths["png"] = plot(rows, probe, os.path.join(out_dir, "ap_vs_gflops.png"), title)
    return paths
