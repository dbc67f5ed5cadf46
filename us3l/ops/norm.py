"""Slimmable BatchNorm with ONE shared (sliced) affine and running statistics stored PER WIDTH.

Statistics of a sub-network depend on every channel before it, so one width's statistics are never
valid for another. Width 1.0 keeps the standard ``running_mean``/``running_var`` buffers (torchvision
compatible); any other width ``w`` keeps ``running_mean_w{key}``/``running_var_w{key}`` buffers, sized to
its active channels, where ``key = round(w * 1000)`` in 4 digits (``0.5 -> w0500``). They are created by
:func:`us3l.calibrate_bn` and travel with ``state_dict()``.

Training mode always normalizes with batch statistics and never touches running statistics (as the
reference code): mixing widths would corrupt them. Statistics come only from BN calibration.
"""
from __future__ import annotations

import functools
import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import US3LError
from .channels import active_channels
from .weight_slice import SliceCache, grad_free
from .width_state import DEFAULT_WIDTH_RANGE, SlimmableMixin, width_key

WIDTH_STATS_RE = re.compile(r"^running_(mean|var)_w(\d{4})$")


@functools.lru_cache(maxsize=1024)
def _stats_names(width: float) -> tuple[str, str]:
    if float(width) >= 1.0:
        return "running_mean", "running_var"
    k = width_key(width)
    return f"running_mean_w{k}", f"running_var_w{k}"


class UncalibratedWidthError(US3LError, RuntimeError):
    pass


class USBatchNorm2d(SlimmableMixin, nn.BatchNorm2d):
    def __init__(self, num_features, eps=1e-5, momentum=0.1, *, sliced=True, width_range=DEFAULT_WIDTH_RANGE):
        super().__init__(num_features, eps, momentum, affine=True, track_running_stats=True)
        self.sliced = sliced  # False after a conv whose output stays full (MobileNetV2's 1280-d head)
        self._init_width(width_range)
        self._calibration: dict | None = None
        self._slice_cache = SliceCache()  # grad-free eval: (weight, bias, mean, var) of recent widths, all views

    def _clear_inference_cache(self) -> None:
        self._slice_cache.clear()

    # -- per-width statistics -------------------------------------------------------------------------
    def features_at(self, width: float) -> int:
        return active_channels(self.num_features, width) if self.sliced else self.num_features

    def active_features(self) -> int:
        return self.features_at(self.width_mult)

    @staticmethod
    def stats_names(width: float) -> tuple[str, str]:
        return _stats_names(width)

    def calibrated_widths(self) -> list[float]:
        found = {int(m.group(2)) / 1000 for m in map(WIDTH_STATS_RE.match, self._buffers) if m}
        return sorted(found)

    def has_stats(self, width: float) -> bool:
        return self.stats_names(width)[0] in self._buffers

    def width_stats(self, width: float) -> tuple[torch.Tensor, torch.Tensor]:
        mean_name, var_name = self.stats_names(width)
        if mean_name not in self._buffers:
            raise UncalibratedWidthError(
                f"BN statistics for width {width} are not calibrated (calibrated: "
                f"{self.calibrated_widths() + [1.0]}); calibrate it first: us3l.calibrate_bn(model, loader, {width}) "
                "for a backbone or classifier, us3l.d2.calibrate_widths / us3l.mmdet.calibrate_widths (or "
                "tools/calibrate_detector.py) for a detector")
        return self._buffers[mean_name], self._buffers[var_name]

    def set_width_stats(self, width: float, mean: torch.Tensor, var: torch.Tensor) -> None:
        c = self.features_at(width)
        if mean.shape != (c,) or var.shape != (c,):
            raise ValueError(f"statistics for width {width} need shape ({c},), got {tuple(mean.shape)}")
        mean_name, var_name = self.stats_names(width)
        self._clear_inference_cache()
        if float(width) >= 1.0:
            self.running_mean.copy_(mean)
            self.running_var.copy_(var)
        else:
            self.register_buffer(mean_name, mean.detach().clone().to(self.weight.device))
            self.register_buffer(var_name, var.detach().clone().to(self.weight.device))

    # -- forward ----------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training and self._calibration is None and grad_free(self.weight, self.bias):
            weight, bias, mean, var = self._eval_tensors()
            if x.shape[1] != weight.shape[0]:
                raise RuntimeError(f"USBatchNorm2d at width {self.width_mult} expects {weight.shape[0]} channels, "
                                   f"got {x.shape[1]}")
            return F.batch_norm(x, mean, var, weight, bias, False, 0.0, self.eps)
        c = self.active_features()
        if x.shape[1] != c:
            raise RuntimeError(f"USBatchNorm2d at width {self.width_mult} expects {c} channels, got {x.shape[1]}")
        weight, bias = (self.weight, self.bias) if c == self.num_features else (self.weight[:c], self.bias[:c])
        if self._calibration is not None:
            with torch.no_grad():
                dims = (0, 2, 3)
                n = x.numel() // c
                self._calibration["mean"] += x.mean(dims)
                self._calibration["var"] += x.var(dims, unbiased=n > 1)
                self._calibration["count"] += 1
            return F.batch_norm(x, None, None, weight, bias, True, 0.0, self.eps)
        if self.training:
            return F.batch_norm(x, None, None, weight, bias, True, 0.0, self.eps)
        mean, var = self.width_stats(self.width_mult)
        return F.batch_norm(x, mean, var, weight, bias, False, 0.0, self.eps)

    def _eval_tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Affine slices (views: in-place updates show through) and statistics of the active width, reused
        until the width, a tensor's identity or the inference mode changes (or the stats are re-registered)."""
        w = self.width_mult
        mean_name, var_name = _stats_names(w)
        buffers = self._buffers
        key = (w, id(buffers.get(mean_name)), id(buffers.get(var_name)))
        validity = (id(self.weight), id(self.bias), torch.is_inference_mode_enabled())
        cache = self._slice_cache
        hit = cache.get(key, validity)
        if hit is not None:
            return hit
        c = self.active_features()
        mean, var = self.width_stats(w)
        weight, bias = (self.weight, self.bias) if c == self.num_features else (self.weight[:c], self.bias[:c])
        return cache.put(key, validity, (weight.detach(), bias.detach(), mean, var), 0, 0)

    # -- checkpoint hooks ------------------------------------------------------------------------------
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        incoming = {}
        for key in state_dict:
            if key.startswith(prefix):
                m = WIDTH_STATS_RE.match(key[len(prefix):])
                if m:
                    incoming[key[len(prefix):]] = state_dict[key]
        # statistics belong to the weights they were calibrated with: stale ones go with a new load
        for name in [n for n in self._buffers if WIDTH_STATS_RE.match(n) and n not in incoming]:
            del self._buffers[name]
        for name, tensor in incoming.items():
            w = int(WIDTH_STATS_RE.match(name).group(2)) / 1000
            c = self.features_at(w)
            if tuple(tensor.shape) != (c,):
                error_msgs.append(f"size mismatch for {prefix}{name}: width {w} needs ({c},), "
                                  f"checkpoint has {tuple(tensor.shape)}")
                continue
            if name not in self._buffers:
                self.register_buffer(name, torch.empty(c, dtype=self.running_mean.dtype,
                                                       device=self.running_mean.device))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
