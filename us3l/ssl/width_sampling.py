"""Which widths one iteration trains: the sandwich rule, and dynamic sampling's 4 stages.

Widths are a pure function of (seed, iteration, progress), so every process of a distributed run samples
the same widths and a resumed run samples exactly what the uninterrupted run would have.
"""
from __future__ import annotations

import random

from ..ops.width_state import canonical_width


def sandwich_widths(w_min: float, num_widths: int, rng: random.Random, w_max: float = 1.0) -> list[float]:
    """``[w_max, w_min]`` plus ``num_widths - 2`` distinct uniform widths in between, sorted descending.

    Unlike the reference code, max and min are never duplicated when more than 3 widths are asked for.
    """
    if num_widths < 1:
        raise ValueError(f"num_widths must be >= 1, got {num_widths}")
    w_max, w_min = canonical_width(w_max), canonical_width(w_min)
    if num_widths == 1 or w_min >= w_max:
        return [w_max]
    widths = {w_max, w_min}
    slots = round((w_max - w_min) * 1000) + 1  # widths have 3-decimal resolution
    target = min(num_widths, slots)
    while len(widths) < target:
        widths.add(canonical_width(rng.uniform(w_min, w_max)))
    return sorted(widths, reverse=True)


def dynamic_min_width(progress: float, w_lo: float, num_stages: int = 4) -> float | None:
    """Smallest width of the stage containing ``progress`` (in [0, 1)); ``None`` in stage 1 (max only).

    Stage s (1-based) of ``num_stages`` equal stages: ``w_lo + (num_stages - s) * (1 - w_lo) / (num_stages - 1)``,
    i.e. 1.0 -> 0.75 -> 0.5 -> 0.25 for 4 stages and w_lo 0.25.
    """
    stage = min(int(progress * num_stages), num_stages - 1) + 1
    if stage == 1:
        return None
    return canonical_width(w_lo + (num_stages - stage) * (1.0 - w_lo) / (num_stages - 1))


class WidthSampler:
    """Widths of iteration ``it`` of ``total``: always-sandwich, or dynamic sampling."""

    def __init__(self, width_range: tuple[float, float], num_widths: int = 3, dynamic: bool = False,
                 num_stages: int = 4, seed: int = 0, fixed_width: float | None = None):
        self.w_lo, self.w_hi = width_range
        self.num_widths, self.dynamic, self.num_stages, self.seed = num_widths, dynamic, num_stages, seed
        self.fixed = None if fixed_width is None else canonical_width(fixed_width)

    def __call__(self, it: int, total: int) -> list[float]:
        if self.fixed is not None:  # an individually trained network: its one width, every iteration
            return [self.fixed]
        rng = random.Random(self.seed * 1_000_003 + it)
        w_min = self.w_lo
        if self.dynamic:
            w_min = dynamic_min_width(it / max(total, 1), self.w_lo, self.num_stages)
            if w_min is None:
                return [canonical_width(self.w_hi)]
        return sandwich_widths(w_min, self.num_widths, rng, self.w_hi)
