"""Slimmable building blocks for detector necks and heads, and the converter that makes them.

A framework builds its own FPN / RPN head / ROI heads (so names, initialisation and forward logic stay the
framework's); :func:`slimmify` then swaps their ``Conv2d`` / ``ConvTranspose2d`` / ``Linear`` / ``BatchNorm2d``
children for slimmable ones that SHARE the same parameters. Parameter names are unchanged, so a slimmable
detector's state dict prefix-slices to the state dict of a plain detector built with the channel counts of
:func:`us3l.detection.export_rules.neck_head_channels` (that is the whole export).

Every layer reads its active channels from ``us3l.active_channels(full, width)``, the rule the backbone uses,
so an FPN lateral conv built for the backbone's FULL output channels and converted with ``slice_in=True``
takes exactly the channels the slimmable backbone emits at that width: no zero padding.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops import DEFAULT_WIDTH_RANGE, USBatchNorm2d, USConv2d, USLinear, active_channels
from ..ops.width_state import SlimmableMixin


class SlimmableConv2d(USConv2d):
    """``USConv2d`` that also applies an optional ``norm`` module and ``activation`` callable after the conv.

    This is the layout of Detectron2's ``layers.Conv2d`` (conv -> ``self.norm`` -> ``self.activation``), so a
    converted Detectron2 conv keeps its parameter names (``<name>.weight``, ``<name>.norm.weight``). A plain
    ``nn.Conv2d`` (e.g. inside mmcv's ``ConvModule``) converts with ``norm=None, activation=None``.
    """

    def __init__(self, *args, norm: nn.Module | None = None, activation=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


class USConvTranspose2d(SlimmableMixin, nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` on the first active input / output channels (weight layout ``[in, out, k, k]``).

    Used by mask heads' 2x upsampling deconv. Only ``groups=1`` and no ``output_padding`` tricks beyond the
    constructor's are supported (what detectors use).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0,
                 groups=1, bias=True, dilation=1, *, slice_in=True, slice_out=True, width_range=DEFAULT_WIDTH_RANGE):
        if groups != 1:
            raise ValueError("slimmable transposed convs support groups=1 only")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, output_padding, groups, bias,
                         dilation)
        self.slice_in, self.slice_out = slice_in, slice_out
        self._init_width(width_range)

    def active_in_out(self) -> tuple[int, int]:
        w = self.width_mult
        c_in = active_channels(self.in_channels, w) if self.slice_in else self.in_channels
        c_out = active_channels(self.out_channels, w) if self.slice_out else self.out_channels
        return c_in, c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c_in, c_out = self.active_in_out()
        if x.shape[1] != c_in:
            raise RuntimeError(f"USConvTranspose2d at width {self.width_mult} expects {c_in} input channels, "
                               f"got {x.shape[1]}")
        weight = self.weight[:c_in, :c_out]
        bias = self.bias[:c_out] if self.bias is not None else None
        return F.conv_transpose2d(x, weight, bias, self.stride, self.padding, self.output_padding, 1, self.dilation)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", slice_in={self.slice_in}, slice_out={self.slice_out}"


class SlimmableFlattenLinear(USLinear):
    """``USLinear`` after ``flatten(C, H, W)``: its input is ``active_channels(C, w) * H * W`` features.

    Flattening is channel-major, so the features of the first ``c`` channels are the first ``c*H*W``
    columns of the weight: the prefix slice of a box head's fc1 is exactly what a plain head at width ``w``
    holds. (``USLinear`` would round ``C*H*W`` as one number, which disagrees with the conv before it.)
    """

    def __init__(self, in_channels: int, spatial: int, out_features: int, bias: bool = True, *,
                 slice_out: bool = True, width_range=DEFAULT_WIDTH_RANGE):
        super().__init__(in_channels * spatial, out_features, bias, slice_in=True, slice_out=slice_out,
                         width_range=width_range)
        self.flatten_channels, self.flatten_spatial = in_channels, spatial

    def active_in_out(self) -> tuple[int, int]:
        w = self.width_mult
        c_in = active_channels(self.flatten_channels, w) * self.flatten_spatial
        c_out = active_channels(self.out_features, w) if self.slice_out else self.out_features
        return c_in, c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() > 2:
            x = torch.flatten(x, 1)
        return super().forward(x)


# ------------------------------------------------------------------------------------------ conversion
def _share(new: nn.Module, old: nn.Module) -> nn.Module:
    """Give ``new`` the parameters (same tensors, not copies) and plain buffers of ``old``."""
    for name, p in old.named_parameters(recurse=False):
        setattr(new, name, p)
    for name, b in old.named_buffers(recurse=False):
        if name in new._buffers:
            new._buffers[name] = b
    new.train(old.training)
    return new.to(next(old.parameters()).device) if any(True for _ in old.parameters()) else new


def slimmable_norm(norm: nn.Module, *, sliced: bool = True, width_range=DEFAULT_WIDTH_RANGE) -> USBatchNorm2d:
    """``BatchNorm2d`` / ``SyncBatchNorm`` -> :class:`us3l.ops.USBatchNorm2d` (per-width statistics).

    Any BN after a width-dependent layer needs per-width statistics, even one whose channels stay full
    (``sliced=False``). A synchronized BN becomes a per-process one: :class:`USBatchNorm2d` uses batch
    statistics while training and calibrated ones afterwards, so cross-process statistics are not needed
    for correctness. GroupNorm / FrozenBN / LayerNorm are refused (their behaviour at a width is not defined
    here), with a message naming the layer type.
    """
    if isinstance(norm, USBatchNorm2d):
        return norm
    if not isinstance(norm, nn.modules.batchnorm._BatchNorm) or not norm.affine or not norm.track_running_stats:
        raise ValueError(f"cannot make {type(norm).__name__} slimmable: neck/head norms of a slimmable detector "
                         "must be BatchNorm (BN/SyncBN) or none; GroupNorm/FrozenBN change meaning with the width")
    new = USBatchNorm2d(norm.num_features, norm.eps, norm.momentum, sliced=sliced, width_range=width_range)
    return _share(new, norm)


def slimmable_conv(conv: nn.Conv2d, *, slice_in: bool = True, slice_out: bool = True,
                   width_range=DEFAULT_WIDTH_RANGE) -> SlimmableConv2d:
    """A :class:`SlimmableConv2d` sharing ``conv``'s parameters; a ``conv.norm`` BN becomes slimmable too."""
    if conv.groups != 1:
        raise ValueError(f"grouped convs cannot be slimmed here (groups={conv.groups})")
    if conv.padding_mode != "zeros":
        raise ValueError(f"padding_mode {conv.padding_mode!r} is not supported by slimmable convs")
    norm = getattr(conv, "norm", None)
    if norm is not None:
        norm = slimmable_norm(norm, sliced=slice_out, width_range=width_range)
    new = SlimmableConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                          conv.dilation, 1, conv.bias is not None, slice_in=slice_in, slice_out=slice_out,
                          width_range=width_range, norm=norm, activation=getattr(conv, "activation", None))
    return _share(new, conv)


def slimmable_conv_transpose(deconv: nn.ConvTranspose2d, *, slice_in: bool = True, slice_out: bool = True,
                             width_range=DEFAULT_WIDTH_RANGE) -> USConvTranspose2d:
    new = USConvTranspose2d(deconv.in_channels, deconv.out_channels, deconv.kernel_size, deconv.stride,
                            deconv.padding, deconv.output_padding, deconv.groups, deconv.bias is not None,
                            deconv.dilation, slice_in=slice_in, slice_out=slice_out, width_range=width_range)
    return _share(new, deconv)


def slimmable_linear(linear: nn.Linear, *, slice_in: bool = True, slice_out: bool = True,
                     flatten_spatial: int | None = None, width_range=DEFAULT_WIDTH_RANGE) -> USLinear:
    """A slimmable linear sharing ``linear``'s parameters.

    ``flatten_spatial=H*W`` marks a linear that follows ``flatten(C, H, W)`` (a box head's fc1): its input
    channels are then ``in_features // (H*W)`` sliced as a conv's (see :class:`SlimmableFlattenLinear`).
    """
    if flatten_spatial:
        if not slice_in or linear.in_features % flatten_spatial:
            raise ValueError(f"{linear.in_features} input features are not channels x {flatten_spatial}")
        new = SlimmableFlattenLinear(linear.in_features // flatten_spatial, flatten_spatial, linear.out_features,
                                     linear.bias is not None, slice_out=slice_out, width_range=width_range)
    else:
        new = USLinear(linear.in_features, linear.out_features, linear.bias is not None, slice_in=slice_in,
                       slice_out=slice_out, width_range=width_range)
    return _share(new, linear)


_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


def slimmify(module: nn.Module, *, keep_in: Iterable[str] = (), keep_out: Iterable[str] = (),
             flatten: Mapping[str, int] | None = None, width_range=DEFAULT_WIDTH_RANGE) -> list[str]:
    """Make every conv / deconv / linear / BN inside ``module`` slimmable, in place; returns the converted names.

    Names are dotted paths relative to ``module`` (as ``named_modules`` gives them).
    ``keep_in``: layers whose INPUT stays full (none in a detector head: their inputs come from the neck).
    ``keep_out``: layers whose OUTPUT stays full (class logits, box deltas, mask logits, anchor outputs).
    ``flatten``: ``{name: H*W}`` for linears after a flatten (see :func:`slimmable_linear`).
    A BN that is its own child follows the layer before it: sliced unless that layer is in ``keep_out``.
    Unknown layers with parameters (GroupNorm, custom ops) are refused rather than silently kept full.
    """
    keep_in, keep_out, flatten = set(keep_in), set(keep_out), dict(flatten or {})
    names = dict(module.named_modules())
    unknown = (keep_in | keep_out | set(flatten)) - set(names)
    if unknown:
        raise KeyError(f"slimmify: no layers named {sorted(unknown)} in {type(module).__name__}")
    converted, replaced, last_sliced_out = [], {}, True
    for name, child in list(module.named_modules()):
        if not name or any(name.startswith(c + ".") for c in converted):
            continue  # the root, or inside a layer converted with its children (a conv's norm)
        if isinstance(child, SlimmableMixin):
            last_sliced_out = getattr(child, "slice_out", getattr(child, "sliced", True))
            continue
        kw = dict(slice_in=name not in keep_in, slice_out=name not in keep_out, width_range=width_range)
        if isinstance(child, nn.Conv2d):
            new = slimmable_conv(child, **kw)
        elif isinstance(child, nn.ConvTranspose2d):
            new = slimmable_conv_transpose(child, **kw)
        elif isinstance(child, nn.Linear):
            new = slimmable_linear(child, flatten_spatial=flatten.get(name), **kw)
        elif isinstance(child, _NORM_TYPES):
            new = slimmable_norm(child, sliced=last_sliced_out, width_range=width_range)
        else:
            if list(child.parameters(recurse=False)):
                raise ValueError(f"slimmify: {name} ({type(child).__name__}) has parameters but no slimmable "
                                 "equivalent")
            continue
        last_sliced_out = getattr(new, "slice_out", getattr(new, "sliced", True))
        replaced[id(child)] = new
        _replace(module, name, new)
        converted.append(name)
    _refresh_module_lists(module, replaced)
    return converted


def _refresh_module_lists(root: nn.Module, replaced: dict) -> None:
    """Plain Python lists of layers (Detectron2's ``FPN.lateral_convs``, used by its forward) follow the swap."""
    for m in root.modules():
        for attr, value in list(vars(m).items()):
            if isinstance(value, (list, tuple)) and any(id(v) in replaced for v in value):
                swapped = [replaced.get(id(v), v) for v in value]
                object.__setattr__(m, attr, type(value)(swapped) if isinstance(value, tuple) else swapped)


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent = root
    *path, leaf = name.split(".")
    for p in path:
        parent = getattr(parent, p)
    setattr(parent, leaf, new)  # keeps the child's position in an nn.Sequential
