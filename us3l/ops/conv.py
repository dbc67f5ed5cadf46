"""Universally slimmable convolution: the active width selects a prefix slice of the weight."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .channels import active_channels
from .weight_slice import SliceCache, prefix_slice
from .width_state import DEFAULT_WIDTH_RANGE, SlimmableMixin


class USConv2d(SlimmableMixin, nn.Conv2d):
    """``nn.Conv2d`` that runs on the first ``c_out`` / ``c_in`` channels at ``width_mult``.

    ``slice_in=False`` keeps the input full (RGB stem); ``slice_out=False`` keeps the output full
    (MobileNetV2's 1280-d head). ``depthwise=True`` ties groups to the active channel count.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=False, *, slice_in=True, slice_out=True, depthwise=False,
                 width_range=DEFAULT_WIDTH_RANGE):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        if depthwise and not (groups == in_channels == out_channels):
            raise ValueError("a depthwise USConv2d needs groups == in_channels == out_channels")
        if groups != 1 and not depthwise:
            raise ValueError("grouped slimmable convs are supported only as depthwise convs")
        self.slice_in, self.slice_out, self.depthwise = slice_in, slice_out, depthwise
        self._init_width(width_range)
        self._slice_cache = SliceCache()  # the grad-free forward's contiguous weight slice (see weight_slice)

    def active_in_out(self) -> tuple[int, int]:
        w = self.width_mult
        c_in = active_channels(self.in_channels, w) if self.slice_in else self.in_channels
        c_out = active_channels(self.out_channels, w) if self.slice_out else self.out_channels
        return c_in, c_out

    def active_weight(self) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """(weight, bias, groups) at the active width; without autograd, reused until the weights change."""
        return self._slice_cache.weight_slices(self.width_mult, self.weight, self.bias, self._slice_active)

    def _slice_active(self) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        c_in, c_out = self.active_in_out()
        groups = c_in if self.depthwise else 1
        weight = prefix_slice(self.weight, c_out, c_in // groups)
        bias = self.bias[:c_out] if self.bias is not None else None
        return weight, bias, groups

    def _clear_inference_cache(self) -> None:
        self._slice_cache.clear()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias, groups = self.active_weight()
        expected = weight.shape[1] * groups
        if x.shape[1] != expected:
            raise RuntimeError(
                f"USConv2d at width {self.width_mult} expects {expected} input channels, got {x.shape[1]}: "
                "widths of adjacent layers disagree (set widths with us3l.set_width on the whole model)")
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, groups)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", slice_in={self.slice_in}, slice_out={self.slice_out}"
