"""Builds either slimmable layers at full size or plain layers at one fixed width, from one description.

Every architecture in :mod:`us3l.models` is written once against this factory, so that the slimmable
model and its fixed-width export (and the detection backbones) have the same layout and parameter names.
"""
from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from ..ops import DEFAULT_WIDTH_RANGE, USBatchNorm2d, USConv2d, USLinear, active_channels


class RatioUSConv2d(USConv2d):
    """``USConv2d`` whose sliced sides keep multiples of an expansion ratio (MobileNetV2's hidden layers)."""

    def __init__(self, *args, ratio: tuple[int, int] = (1, 1), **kwargs):
        super().__init__(*args, **kwargs)
        self.ratio = tuple(ratio)

    def active_in_out(self) -> tuple[int, int]:
        w, (r_in, r_out) = self.width_mult, self.ratio
        c_in = active_channels(self.in_channels, w, ratio=r_in) if self.slice_in else self.in_channels
        c_out = active_channels(self.out_channels, w, ratio=r_out) if self.slice_out else self.out_channels
        return c_in, c_out


class RatioUSBatchNorm2d(USBatchNorm2d):
    """``USBatchNorm2d`` over channels that are a multiple of an expansion ratio."""

    def __init__(self, *args, ratio: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        self.ratio = int(ratio)

    def features_at(self, width: float) -> int:
        return active_channels(self.num_features, width, ratio=self.ratio) if self.sliced else self.num_features


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

    def channels(self, full: int, sliced: bool = True, ratio: int = 1) -> int:
        if self.slimmable or not sliced:
            return full
        return active_channels(full, self.width, ratio=ratio)

    def conv(self, cin, cout, kernel_size, stride=1, padding=0, groups=1, bias=False, *,
             slice_in=True, slice_out=True, depthwise=False, ratio: tuple[int, int] = (1, 1)) -> nn.Module:
        """``ratio``: expansion ratios of the input / output sides (channel counts stay multiples of them)."""
        if self.slimmable:
            args = (cin, cout, kernel_size, stride, padding, 1, groups, bias)
            kw = dict(slice_in=slice_in, slice_out=slice_out, depthwise=depthwise, width_range=self.width_range)
            return USConv2d(*args, **kw) if tuple(ratio) == (1, 1) else RatioUSConv2d(*args, ratio=ratio, **kw)
        cin, cout = self.channels(cin, slice_in, ratio[0]), self.channels(cout, slice_out, ratio[1])
        return nn.Conv2d(cin, cout, kernel_size, stride, padding, 1, cin if depthwise else groups, bias)

    def norm(self, num_features: int, sliced: bool = True, ratio: int = 1) -> nn.Module:
        if self.slimmable:
            if ratio != 1:
                return RatioUSBatchNorm2d(num_features, sliced=sliced, width_range=self.width_range, ratio=ratio)
            return USBatchNorm2d(num_features, sliced=sliced, width_range=self.width_range)
        c = self.channels(num_features, sliced, ratio)
        return self._norm_layer(c) if self._norm_layer is not None else nn.BatchNorm2d(c)

    def linear(self, fin, fout, bias=True, *, slice_in=True, slice_out=False) -> nn.Module:
        if self.slimmable:
            return USLinear(fin, fout, bias, slice_in=slice_in, slice_out=slice_out, width_range=self.width_range)
        return nn.Linear(self.channels(fin, slice_in), self.channels(fout, slice_out), bias)
