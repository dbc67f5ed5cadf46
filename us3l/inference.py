"""The grad-free fast path of slimmable models: what it holds, and how to drop it.

Nothing here needs to be called: in eval mode (or any forward without autograd) every input-sliced
``USConv2d``/``USLinear`` runs on a contiguous copy of its active weight, made on the first forward after a
width change and reused until the weights change (see :mod:`us3l.ops.weight_slice` for what counts as a
change). Slicing the output channels, the BN affine and the per-width BN statistics needs no copy (views and
stored buffers), so a model holds at most the conv/linear weights of ONE static network: the one for its
last grad-free width.
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
