"""The grad-free fast path of slimmable models: what it holds, and how to drop it.

Nothing here needs to be called: in eval mode (or any forward without autograd) every input-sliced
``USConv2d``/``USLinear`` runs on a contiguous copy of its active weight, made on the first forward after a
width change and reused until the weights change (see :mod:`us3l.ops.weight_slice` for what counts as a
change). Each layer keeps the copies of its last few widths (4 by default, :func:`keep_widths`), so a width
switch between them costs nothing: the width can change every call. Slicing the output channels, the BN
affine and the per-width BN statistics needs no copy (views and stored buffers); the copies a layer keeps
never exceed its full weight in bytes, so a model holds at most the size of its full-width conv/linear
weights in extra memory (``bench/width_switch.md`` measures both).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .ops import USBatchNorm2d
from .width import slimmable_modules


def cached_bytes(model: nn.Module) -> int:
    """Bytes of weight copies ``model`` holds for grad-free forwards (0 when none is held)."""
    return sum(m._slice_cache.nbytes() for m in slimmable_modules(model) if hasattr(m, "_slice_cache"))


def clear_cache(model: nn.Module) -> None:
    """Drop those copies; needed only after writing weights through ``tensor.data`` (invisible otherwise)."""
    for m in slimmable_modules(model):
        m._clear_inference_cache()


@torch.no_grad()
def prepare(model: nn.Module) -> None:
    """Make the active width's tensors now rather than in the next ``torch.no_grad`` forward (e.g. right after
    ``us3l.set_width``, before latency matters). Raises ``UncalibratedWidthError`` in eval mode when the width
    has no BN statistics, as that forward would."""
    for m in slimmable_modules(model):
        if isinstance(m, USBatchNorm2d):
            if not m.training:
                m._eval_tensors()
        elif hasattr(m, "active_weight"):
            m.active_weight()


def keep_widths(model: nn.Module, k: int) -> None:
    """Keep the grad-free copies of up to ``k`` recent widths per layer (default 4; 1: only the last width, the
    least memory). Extra memory stays bounded by the full-width weights whatever ``k``."""
    if int(k) < 1:
        raise ValueError(f"keep_widths needs k >= 1, got {k!r}")
    for m in slimmable_modules(model):
        cache = getattr(m, "_slice_cache", None)
        if cache is not None:
            cache.set_capacity(k)
