"""Projector / predictor MLPs of the SSL networks.

The projector's first linear layer is the only head layer that follows the backbone's width (it slices its
input, as the backbone's pooled feature shrinks with the width); every head output stays full width, so
sub-networks and the teacher produce comparable vectors.
"""
from __future__ import annotations

import torch.nn as nn

from ..ops import USConv2d, USLinear


def mlp(in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2, last_bn: bool = False,
        slice_input: bool = False) -> nn.Sequential:
    """``Linear-BN-ReLU`` x (num_layers-1), then ``Linear`` (+ BN without affine when ``last_bn``)."""
    if num_layers < 1:
        raise ValueError(f"an MLP head needs at least one layer, got {num_layers}")
    layers: list[nn.Module] = []
    dim = in_dim
    for i in range(num_layers - 1):
        first = i == 0 and slice_input
        linear = (USLinear(dim, hidden_dim, bias=False, slice_in=True) if first
                  else nn.Linear(dim, hidden_dim, bias=False))
        layers += [linear, nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
        dim = hidden_dim
    last_sliced = num_layers == 1 and slice_input
    layers.append(USLinear(dim, out_dim, slice_in=True) if last_sliced else nn.Linear(dim, out_dim))
    if last_bn:
        layers.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*layers)


def feature_adapter(channels: int) -> USConv2d:
    """1x1 conv from a sub-network's active channels to the teacher's full channels (feature distillation)."""
    return USConv2d(channels, channels, 1, slice_in=True, slice_out=False)
