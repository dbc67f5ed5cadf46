"""Universally slimmable linear layer (by default slices only its input, as projector/classifier heads do)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .channels import active_channels
from .weight_slice import SliceCache, prefix_slice
from .width_state import DEFAULT_WIDTH_RANGE, SlimmableMixin


class USLinear(SlimmableMixin, nn.Linear):
    def __init__(self, in_features, out_features, bias=True, *, slice_in=True, slice_out=False,
                 width_range=DEFAULT_WIDTH_RANGE):
        super().__init__(in_features, out_features, bias)
        self.slice_in, self.slice_out = slice_in, slice_out
        self._init_width(width_range)
        self._slice_cache = SliceCache()  # the grad-free forward's contiguous weight slice (see weight_slice)

    def active_in_out(self) -> tuple[int, int]:
        w = self.width_mult
        c_in = active_channels(self.in_features, w) if self.slice_in else self.in_features
        c_out = active_channels(self.out_features, w) if self.slice_out else self.out_features
        return c_in, c_out

    def active_weight(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight, bias) at the active width; without autograd, reused until the weights change."""
        return self._slice_cache.weight_slices(self.width_mult, self.weight, self.bias, self._slice_active)

    def _slice_active(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        c_in, c_out = self.active_in_out()
        weight = prefix_slice(self.weight, c_out, c_in)
        bias = self.bias[:c_out] if self.bias is not None else None
        return weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.active_weight()
        if x.shape[-1] != weight.shape[1]:
            raise RuntimeError(f"USLinear at width {self.width_mult} expects {weight.shape[1]} input features, "
                               f"got {x.shape[-1]}")
        return F.linear(x, weight, bias)

    def _clear_inference_cache(self) -> None:
        self._slice_cache.clear()
