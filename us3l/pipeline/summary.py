"""The main job's table: per (init, width) mean and spread over seeds, and AP against whole-detector GFLOPs.

Input: one per-run ``results.json`` (:mod:`.results_table`) per (init, seed). Output: ``results.json`` whose
rows carry ``width``, ``init``, ``seeds``, ``box_AP_mean``/``_std``, ``mask_AP_mean``/``_std``,
``detector_gflops`` (plus backbone GFLOPs and the per-seed values), ``results.csv``, ``results.md`` and
``ap_vs_gflops.png`` (error bars: one sample standard deviation over seeds).
"""
from __future__ import annotations

import math
import os
import statistics
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

from ..width import width_text
from . import table_files

FORMAT = "us3l.main_results/1"
# column key -> header; the order is the table's
COLUMNS = [
    ("init", "init"),
    ("width", "width"),
    ("box_AP_mean", "box AP"),
    ("box_AP_std", "box AP std"),
    ("mask_AP_mean", "mask AP"),
    ("mask_AP_std", "mask AP std"),
    ("detector_gflops", "detector GFLOPs"),
    ("backbone_gflops", "backbone GFLOPs"),
    ("seeds", "seeds"),
]


def _finite(v) -> Optional[float]:
    if v is None:
        return None
    v = float(v)
    return None if math.isnan(v) or math.isinf(v) else v


def mean_std(values: Sequence[Optional[float]]) -> tuple:
    """Mean and sample standard deviation (n-1) of the finite values; std is None below two values."""
    vals = [v for v in (_finite(x) for x in values) if v is not None]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)


def summarize(runs: Mapping[str, Mapping[int, Sequence[dict]]]) -> List[dict]:
    """Rows per (init, width) from ``runs[init][seed]`` = that run's per-width rows (box_AP, mask_AP,
    detector_gflops, gflops)."""
    rows = []
    for init, by_seed in runs.items():
        widths = sorted({float(r["width"]) for rs in by_seed.values() for r in rs}, reverse=True)
        for w in widths:
            per_seed = {s: next((r for r in rs if float(r["width"]) == w), None) for s, rs in sorted(by_seed.items())}
            got = {s: r for s, r in per_seed.items() if r is not None}
            box_m, box_s = mean_std([r.get("box_AP") for r in got.values()])
            mask_m, mask_s = mean_std([r.get("mask_AP") for r in got.values()])
            first = next(iter(got.values()))
            rows.append({"width": w, "init": init, "seeds": sorted(got),
                         "box_AP_mean": box_m, "box_AP_std": box_s, "mask_AP_mean": mask_m, "mask_AP_std": mask_s,
                         "detector_gflops": _finite(first.get("detector_gflops")),
                         "backbone_gflops": _finite(first.get("gflops")),
                         "box_AP_per_seed": [_finite(r.get("box_AP")) for r in got.values()],
                         "mask_AP_per_seed": [_finite(r.get("mask_AP")) for r in got.values()]})
    return rows


def width_effect(rows: Iterable[dict], init: str, wide: Optional[float] = None, narrow: Optional[float] = None,
                 key: str = "box_AP") -> Optional[dict]:
    """Does width show above the seed noise? ``gap`` = mean(wide) - mean(narrow), ``noise`` = twice the larger
    of the two standard deviations; ``shows`` when gap > noise. Default: the widest and narrowest width run
    (1.0 and 0.25 in the default job)."""
    by_w = {r["width"]: r for r in rows if r["init"] == init}
    wide = max(by_w, default=None) if wide is None else wide
    narrow = min(by_w, default=None) if narrow is None else narrow
    if wide not in by_w or narrow not in by_w or wide == narrow:
        return None
    gap, noise = gap_and_noise(by_w[wide], by_w[narrow], key)
    if gap is None:
        return None
    return {"init": init, "metric": key, "wide": wide, "narrow": narrow, "gap": gap, "twice_max_std": noise,
            "shows": bool(noise is not None and gap > noise)}


def gap_and_noise(a: dict, b: dict, key: str) -> tuple:
    """``mean(a) - mean(b)`` and the noise bar every reading here uses: twice the larger of the two stds
    (None where a mean is missing / no std is known)."""
    if a[f"{key}_mean"] is None or b[f"{key}_mean"] is None:
        return None, None
    stds = [s for s in (a[f"{key}_std"], b[f"{key}_std"]) if s is not None]
    return a[f"{key}_mean"] - b[f"{key}_mean"], (2 * max(stds) if stds else None)


def verdict(gap: float, noise: Optional[float]) -> str:
    """"better" / "worse" when |gap| exceeds the noise bar, else "within noise"; "n/a" without a noise bar."""
    if noise is None:
        return "n/a"
    return "within noise" if abs(gap) <= noise else ("better" if gap > 0 else "worse")


def init_comparison(rows: Iterable[dict], init: str = "us3l", baseline: str = "random",
                    key: str = "box_AP") -> List[dict]:
    """Per width: does ``init`` beat ``baseline``? ``gap`` = mean(init) - mean(baseline); ``verdict`` is
    "better" / "worse" when |gap| exceeds twice the larger std, else "within noise" (n/a without stds)."""
    rows = list(rows)
    a = {r["width"]: r for r in rows if r["init"] == init}
    b = {r["width"]: r for r in rows if r["init"] == baseline}
    out = []
    for w in sorted(set(a) & set(b), reverse=True):
        gap, noise = gap_and_noise(a[w], b[w], key)
        if gap is None:
            continue
        out.append({"width": w, "metric": key, "init": init, "baseline": baseline, "gap": gap,
                    "twice_max_std": noise, "verdict": verdict(gap, noise)})
    return out


def _versus_cell(c: dict) -> str:
    noise = "n/a" if c["twice_max_std"] is None else f"{c['twice_max_std']:.1f}"
    return f"{c['width']:g}x {c['gap']:+.1f} ({noise}) {c['verdict']}"


def format_cell(key: str, v) -> str:
    """A table cell: widths as their tags, seeds space-separated, GFLOPs to 3 decimals, AP to 1."""
    if v is None:
        return "n/a"
    if key == "width":  # 1.00, 0.75, and three decimals only where needed (0.375)
        return width_text(v)
    if key == "seeds":
        return " ".join(str(s) for s in v)
    if key.endswith("gflops"):
        return f"{v:.3f}"
    if isinstance(v, float):
        return f"{v:.1f}"
    return str(v)


def render_markdown(rows: List[dict], title: str = "", notes: Iterable[str] = ()) -> str:
    return table_files.render_markdown(rows, COLUMNS, format_cell, title, notes, left=("init",))


def plot(rows: List[dict], path: str, title: str = "") -> str:
    """Box and mask AP against whole-detector GFLOPs, one line per init, error bars = std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    for ax, key, label in ((axes[0], "box_AP", "box AP"), (axes[1], "mask_AP", "mask AP")):
        for init, marker in zip(sorted({r["init"] for r in rows}, key=lambda i: i != "us3l"), "os^v"):
            pts = sorted((r for r in rows if r["init"] == init and r.get("detector_gflops") is not None
                          and r.get(f"{key}_mean") is not None), key=lambda r: r["detector_gflops"])
            if not pts:
                continue
            x = [r["detector_gflops"] for r in pts]
            y = [r[f"{key}_mean"] for r in pts]
            err = [r[f"{key}_std"] or 0.0 for r in pts]
            ax.errorbar(x, y, yerr=err, marker=marker, capsize=3, label=f"{init} init")
            for r in pts:
                ax.annotate(f"{r['width']:g}x", (r["detector_gflops"], r[f"{key}_mean"]),
                            textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xlabel("detector GFLOPs (whole detector)")
        ax.set_ylabel(f"COCO {label} (mean +- std over seeds)")
        table_files.finish_axes(ax)
    fig.suptitle(title or "AP vs detector GFLOPs")
    return table_files.save_figure(plt, fig, path)


def _csv_cell(key: str, v):
    return " ".join(map(str, v)) if key == "seeds" else v


def write_summary(rows: List[dict], out_dir: str, title: str = "", meta: Optional[Dict] = None,
                  notes: Iterable[str] = ()) -> Dict[str, str]:
    """Write ``results.{json,csv,md}`` and ``ap_vs_gflops.png``; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    rows = sorted(rows, key=lambda r: (r["init"] != "us3l", r["init"], -r["width"]))
    notes = list(notes)
    effects = [e for e in (width_effect(rows, i) for i in sorted({r["init"] for r in rows})) if e]
    versus = init_comparison(rows)
    doc = {"format": FORMAT, "title": title, "columns": [k for k, _ in COLUMNS], "rows": rows,
           "width_effect": effects, "us3l_vs_random": versus, "meta": meta or {}, "notes": notes}
    effect_notes = [f"width effect ({e['init']} init, box AP): {e['wide']:g}x - {e['narrow']:g}x = {e['gap']:.1f}, "
                    f"twice the larger std = " + (f"{e['twice_max_std']:.1f}" if e["twice_max_std"] is not None
                                                  else "n/a") + (" -> shows" if e["shows"] else " -> within noise")
                    for e in effects]
    if versus:
        effect_notes.append("US3L vs random init (box AP, us3l - random, twice the larger std in brackets): "
                            + "; ".join(_versus_cell(c) for c in versus))
    paths = table_files.write_table_files(out_dir, doc, rows, COLUMNS, _csv_cell,
                                          render_markdown(rows, title, notes + effect_notes))
    paths["png"] = plot(rows, os.path.join(out_dir, "ap_vs_gflops.png"), title)
    return paths
