"""The transfer table's honest reading: per protocol and width, is US3L above, within noise of, or below each
alternative?

Written from the rows alone (never by hand), with the one noise bar every table here uses: a gap counts when it
exceeds twice the larger of the two seed standard deviations (:func:`.summary.gap_and_noise`).
"""
from __future__ import annotations

from typing import Iterable, List, Optional, Sequence

from .summary import gap_and_noise, verdict

METHODS = ("random", "simsiam_naive", "simsiam_inplace", "us3l", "individual")
PROTOCOLS = ("frozen", "finetune")


def compare(rows: Iterable[dict], method: str = "us3l", baselines: Optional[Sequence[str]] = None,
            key: str = "box_AP") -> List[dict]:
    """One entry per (protocol, width, baseline) present for both ``method`` and the baseline (default: every
    other method of :data:`METHODS`):
    ``gap`` = mean(method) - mean(baseline), ``twice_max_std``, ``verdict`` (better / within noise / worse;
    n/a where no std is known, e.g. a single seed)."""
    rows = list(rows)
    baselines = [m for m in METHODS if m != method] if baselines is None else baselines
    by = {(r["method"], r["protocol"], float(r["width"])): r for r in rows}
    out = []
    for protocol in [p for p in PROTOCOLS if any(r["protocol"] == p for r in rows)]:
        widths = sorted({w for (m, p, w) in by if m == method and p == protocol}, reverse=True)
        for w in widths:
            for base in baselines:
                if (base, protocol, w) not in by:
                    continue
                gap, noise = gap_and_noise(by[(method, protocol, w)], by[(base, protocol, w)], key)
                if gap is None:
                    continue
                out.append({"protocol": protocol, "width": w, "method": method, "baseline": base, "metric": key,
                            "gap": gap, "twice_max_std": noise, "verdict": verdict(gap, noise)})
    return out


def reading_lines(rows: Iterable[dict], method: str = "us3l", key: str = "box_AP") -> List[str]:
    """The reading as sentences, one per (protocol, width), e.g.
    ``frozen 0.25x, box AP: us3l vs random +6.1 (noise 2.0): better; vs simsiam_naive -3.0 (noise 1.1): worse``."""
    entries = compare(rows, method, key=key)
    lines = []
    for protocol in PROTOCOLS:
        for w in sorted({e["width"] for e in entries if e["protocol"] == protocol}, reverse=True):
            cells = [f"vs {e['baseline']} {e['gap']:+.1f} (noise "
                     + ("n/a" if e["twice_max_std"] is None else f"{e['twice_max_std']:.1f}") + f"): {e['verdict']}"
                     for e in entries if e["protocol"] == protocol and e["width"] == w]
            lines.append(f"{protocol} {w:g}x, {key.replace('_', ' ')}: {method} " + "; ".join(cells))
    return lines


def claim_summary(rows: Iterable[dict], method: str = "us3l", key: str = "box_AP") -> List[str]:
    """Where the paper's claim (US3L above every alternative at every width) does not hold, by how much."""
    misses = [e for e in compare(rows, method, key=key) if e["verdict"] != "better"]
    if not misses:
        return [f"{key.replace('_', ' ')}: {method} is above every alternative by more than the noise at every "
                "width and protocol measured"]
    return [f"{key.replace('_', ' ')}: not reproduced at {e['protocol']} {e['width']:g}x against {e['baseline']}: "
            f"{e['gap']:+.1f} with noise " + ("n/a" if e["twice_max_std"] is None else f"{e['twice_max_std']:.1f}")
            + f" ({e['verdict']})" for e in misses]
