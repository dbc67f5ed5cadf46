"""Group regularization: an explicit L2 penalty that spares the later channels (replaces weight decay).

Later channels are trained only by wide sub-networks; a uniform weight decay shrinks them as hard as the
always-trained first channels. Each tensor is split along dim 0 into ``bins`` groups, group i weighted
``lambda * (1 - alpha_t * i)`` (linear) or ``lambda * alpha_t ** i`` (exp). ``alpha_t`` is "no
differentiation" before the warm-up epoch (0 for linear, 1 for exp), then ramps linearly to ``alpha`` by
``ramp_end`` of training. Conv weights and 1-D parameters are binned; 2-D linear weights get ``lambda``.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch

GROUP_REG_TYPES = ("linear", "exp")


def alpha_at(alpha: float, kind: str, iteration: int, warmup_iters: int, ramp_end_iters: int) -> float:
    """The group contrast ``alpha_t`` at an iteration (see module docstring)."""
    if kind not in GROUP_REG_TYPES:
        raise ValueError(f"unknown group regularization type {kind!r}; choose from {GROUP_REG_TYPES}")
    neutral = 0.0 if kind == "linear" else 1.0
    if iteration < warmup_iters:
        return neutral
    span = ramp_end_iters - warmup_iters
    frac = 1.0 if span <= 0 else min(1.0, (iteration - warmup_iters) / span)
    return neutral + frac * (alpha - neutral)


def bin_multipliers(bins: int, alpha_t: float, kind: str) -> list[float]:
    if kind == "linear":
        return [1.0 - alpha_t * i for i in range(bins)]
    return [alpha_t ** i for i in range(bins)]


def bin_sizes(n: int, bins: int) -> list[int]:
    """``bins`` groups of ``n // bins`` along dim 0; the last takes the remainder (fewer groups if n < bins)."""
    if n < bins:
        return [1] * n
    base = n // bins
    return [base] * (bins - 1) + [n - base * (bins - 1)]


class GroupRegularizer:
    """``sum_i lambda_i * ||theta_i||^2`` over the given named parameters."""

    def __init__(self, lam: float = 5e-5, alpha: float = 0.05, bins: int = 8, kind: str = "linear"):
        if kind not in GROUP_REG_TYPES:
            raise ValueError(f"unknown group regularization type {kind!r}; choose from {GROUP_REG_TYPES}")
        if bins < 1:
            raise ValueError(f"group regularization needs >= 1 bin, got {bins}")
        self.lam, self.alpha, self.bins, self.kind = lam, alpha, bins, kind

    def weights_for(self, param: torch.Tensor, alpha_t: float) -> torch.Tensor | None:
        """Per-row (dim 0) penalty weights of a binned tensor, ``None`` for a uniformly weighted one."""
        if param.dim() == 2:  # linear weights: uniform lambda
            return None
        mult = bin_multipliers(self.bins, alpha_t, self.kind)
        sizes = bin_sizes(param.shape[0], self.bins)
        return torch.cat([torch.full((s,), self.lam * m, dtype=param.dtype, device=param.device)
                          for s, m in zip(sizes, mult)])

    def penalty(self, params: Iterable[torch.Tensor], alpha_t: float) -> torch.Tensor:
        total = None
        for p in params:
            if not p.requires_grad:
                continue
            w = self.weights_for(p, alpha_t)
            if w is None:
                term = self.lam * p.pow(2).sum()
            else:
                term = (w * p.pow(2).reshape(p.shape[0], -1).sum(1)).sum()
            total = term if total is None else total + term
        if total is None:
            return torch.zeros(())
        return total

