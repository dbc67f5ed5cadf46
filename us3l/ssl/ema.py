"""The momentum (EMA) teacher: a slowly moving full-width copy of the online network.

Guideline 1 of US3L: sub-networks must chase targets that do not jump between iterations; the EMA of the
online weights is such a source. It is updated ONCE per iteration (in the max-width pass).
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn

from ..width import set_width

EMA_SCHEDULES = ("constant", "cosine")


def momentum_at(base: float, schedule: str, progress: float) -> float:
    """EMA momentum at training progress in [0, 1]; ``cosine`` goes from ``base`` to 1.0 (BYOL)."""
    if schedule == "constant":
        return base
    if schedule == "cosine":
        return 1.0 - (1.0 - base) * (math.cos(math.pi * min(max(progress, 0.0), 1.0)) + 1.0) / 2.0
    raise ValueError(f"unknown EMA schedule {schedule!r}; choose from {EMA_SCHEDULES}")


def make_teacher(module: nn.Module) -> nn.Module:
    """A frozen copy of ``module`` at width 1.0 (never trained by the optimizer)."""
    teacher = copy.deepcopy(module)
    for p in teacher.parameters():
        p.requires_grad_(False)
    try:
        set_width(teacher, 1.0)
    except ValueError:
        pass  # no slimmable layers (e.g. a plain head)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, online: nn.Module, momentum: float) -> None:
    """``theta_k = m * theta_k + (1 - m) * theta_q`` for parameters; buffers are copied."""
    t_params = dict(teacher.named_parameters())
    for name, q in online.named_parameters():
        if name in t_params:
            t_params[name].mul_(momentum).add_(q.detach(), alpha=1.0 - momentum)
    t_bufs = dict(teacher.named_buffers())
    for name, b in online.named_buffers():
        if name in t_bufs and t_bufs[name].shape == b.shape:
            t_bufs[name].copy_(b)
