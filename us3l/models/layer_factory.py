"""Builds either slimmable layers at full size or plain layers at one fixed width, from one description.

Every architecture in :mod:`us3l.models` is written once against this factory, so that the slimmable
model and its fixed-width export (and the detection backbones) have the same layout and parameter names.
"""
from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from ..ops import DEFAULT_WIDTH_RANGE, USBatchNorm2d, USConv2d, USLinear, active_channels


class LayerFactory:
    """``width=None``: universally slimmable layers at full size. ``width=w``: plain layers sized for ``w``."""

    def __init__(self, width: float | None = None, norm_layer: Callable[[int], nn.Module] | None = None,
                 width_range=DEFAULT_WIDTH_RANGE):
        self.width = width
        self.width_range = width_range
        self._norm_layer = norm_layer

    @property
    def slimmable(self) -> bool:
        return self.width is None

    def channels(self, full: int, sliced: bool = True) -> int:
        if self.slimmable or not sliced:
            return full
        return active_channels(full, self.width)

    def conv(self, cin, cout, kernel_size, stride=1, padding=0, groups=1, bias=False, *,
             slice_in=True, slice_out=True, depthwise=False) -> nn.Module:
        if self.slimmable:
            return USConv2d(cin, cout, kernel_size, stride, padding, 1, groups, bias, slice_in=slice_in,
                            slice_out=slice_out, depthwise=depthwise, width_range=self.width_range)
        cin, cout = self.channels(cin, slice_in), self.channels(cout, slice_out)
        return nn.Conv2d(cin, cout, kernel_size, stride, padding, 1, cin if depthwise else groups, bias)

    def norm(self, num_features: int, sliced: bool = True) -> nn.Module:
        if self.slimmable:
            return USBatchNorm2d(num_features, sliced=sliced, width_range=self.width_range)
        c = self.channels(num_features, sliced)
        return self._norm_layer(c) if self._norm_layer is not None else nn.BatchNorm2d(c)

    def linear(self, fin, fout, bias=True, *, slice_in=True, slice_out=False) -> nn.Module:
        if self.slimmable:
            return USLinear(fin, fout, bias, slice_in=slice_in, slice_out=slice_out, width_range=self.width_range)
        return nn.Linear(self.channels(fin, slice_in), self.channels(fout, slice_out), bias)
