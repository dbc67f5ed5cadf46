"""Which width to deploy under a budget: the accuracy / cost Pareto front of one slimmable detector's widths.

A width is worth deploying only if no other width is at least as accurate for at most its cost; under a budget
the most accurate width that fits is chosen (at equal accuracy, the cheaper one). The rows are those of
``tools/eval_widths.py`` (``width``, ``box_AP``, ``mask_AP``) with a cost column added by the caller.
"""
from __future__ import annotations

from collections.abc import Sequence

from ..errors import US3LError


class NoWidthFits(US3LError, ValueError):
    """No width meets the budget (the message names the cheapest width and its cost)."""


def accuracy(row: dict) -> tuple[float, float]:
    """Box AP first, mask AP to break ties (a missing value counts as the lowest)."""
    return tuple(float("-inf") if row.get(k) is None else float(row[k]) for k in ("box_AP", "mask_AP"))


def pareto_front(rows: Sequence[dict], cost: str) -> list[dict]:
    """The rows no other row dominates (cost <= and accuracy >=, one of them strictly), cheapest first."""
    front, best = [], None
    for row in sorted(rows, key=lambda r: (r[cost], tuple(-a for a in accuracy(r)))):
        if best is None or accuracy(row) > best:
            front.append(row)
            best = accuracy(row)
    return front


def pick(rows: Sequence[dict], cost: str, budget: float, unit: str) -> dict:
    """The most accurate row with ``row[cost] <= budget`` (ties: the cheaper); :class:`NoWidthFits` if none."""
    if not rows:
        raise ValueError("no widths to choose from")
    fits = [r for r in rows if r[cost] <= budget]
    if not fits:
        cheapest = min(rows, key=lambda r: r[cost])
        raise NoWidthFits(f"no width meets the budget of {budget:g} {unit}: the cheapest is width "
                          f"{cheapest['width']:g} at {cheapest[cost]:.4g} {unit}")
    return max(fits, key=lambda r: (accuracy(r), -r[cost]))
