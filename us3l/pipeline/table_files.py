"""The files of a results table, written one way for the per-run table (:mod:`.results_table`) and the summary
over seeds (:mod:`.summary`): ``results.json`` (the source, replaced atomically so a reader never sees half a
file), ``results.csv`` and ``results.md`` (renderings), and the common finish of their AP-vs-GFLOPs plots."""
from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Iterable, Sequence


def render_markdown(rows: Sequence[dict], columns: Sequence[tuple], fmt: Callable[[str, object], str],
                    title: str = "", notes: Iterable[str] = (), left: Iterable[str] = ()) -> str:
    """A markdown table of ``rows`` (``columns``: (key, header) pairs, ``left``: left-aligned keys), then notes."""
    left = set(left)
    lines = [f"# {title}", ""] if title else []
    lines.append("| " + " | ".join(h for _, h in columns) + " |")
    lines.append("|" + "|".join(":---" if k in left else "---:" for k, _ in columns) + "|")
    for r in rows:
        lines.append("| " + " | ".join(fmt(k, r.get(k)) for k, _ in columns) + " |")
    notes = list(notes)
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def write_table_files(out_dir: str, doc: dict, rows: Sequence[dict], columns: Sequence[tuple],
                      csv_cell: Callable[[str, object], object], markdown: str) -> dict[str, str]:
    """Write ``results.{json,csv,md}`` into ``out_dir`` (which exists); returns their paths."""
    paths = {k: os.path.join(out_dir, f"results.{k}") for k in ("json", "csv", "md")}
    tmp = paths["json"] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=2, allow_nan=False)
    os.replace(tmp, paths["json"])
    with open(paths["csv"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([k for k, _ in columns])
        for r in rows:
            w.writerow(["" if r.get(k) is None else csv_cell(k, r[k]) for k, _ in columns])
    with open(paths["md"], "w") as f:
        f.write(markdown)
    return paths


def finish_axes(ax) -> None:
    """Grid, margins that keep the width labels inside, and a legend when something is labelled."""
    ax.grid(alpha=0.3)
    ax.margins(x=0.08, y=0.15)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()


def save_figure(plt, fig, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
