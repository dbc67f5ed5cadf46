"""Universally slimmable linear layer (by default slices only its input, as projector/classifier heads do)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .channels import active_channels
from .width_state import DEFAULT_WIDTH_RANGE, SlimmableMixin


class USLinear(SlimmableMixin, nn.Linear):
    def __init__(self, in_features, out_features, bias=True, *, slice_in=True, slice_out=False,
                 width_range=DEFAULT_WIDTH_RANGE):
        super().__init__(in_features, out_features, bias)
        self.slice_in, self.slice_out = slice_in, slice_out
        self._init_width(width_range)

    def active_in_out(self) -> tuple[int, int]:
        w = self.width_mult
        c_in = active_channels(self.in_features, w) if self.slice_in else self.in_features
        c_out = active_channels(self.out_features, w) if self.slice_out else self.out_features
        return c_in, c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c_in, c_out = self.active_in_out()
        if x.shape[-1] != c_in:
            raise RuntimeError(f"USLinear at width {self.width_mult} expects {c_in} input features, "
                               f"got {x.shape[-1]}")
        weight = self.weight if (c_in, c_out) == tuple(self.weight.shape[::-1]) else self.weight[:c_out, :c_in]
        bias = self.bias[:c_out] if self.bias is not None else None
        return F.linear(x, weight, bias)
