"""Projector / predictor MLPs of the SSL networks.

The projector's first linear layer is the only head layer that follows the backbone's width (it slices its
input, as the backbone's pooled feature shrinks with the width); every head output stays full width, so
sub-networks and the teacher produce comparable vectors. Layout and biases follow the reference code, whose
projector replaces the backbone's classifier: ``Linear(+bias) BN ReLU [Linear BN ReLU] Linear(+bias)``.
"""
from __future__ import annotations

import torch.nn as nn

from ..ops import DEFAULT_WIDTH_RANGE, USConv2d, USLinear


def mlp(in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2, last_bn: bool = False,
        slice_input: bool = False, first_bias: bool = False, hidden_bias: bool = False,
        width_range=DEFAULT_WIDTH_RANGE) -> nn.Sequential:
    """``Linear-BN-ReLU`` x (num_layers-1), then ``Linear`` (+ BN without affine when ``last_bn``).

    ``first_bias`` / ``hidden_bias``: bias of the first / the other hidden linear layers (redundant before BN,
    kept where the reference has one so that its checkpoints map tensor for tensor).
    """
    if num_layers < 1:
        raise ValueError(f"an MLP head needs at least one layer, got {num_layers}")
    layers: list[nn.Module] = []
    dim = in_dim
    for i in range(num_layers - 1):
        bias = first_bias if i == 0 else hidden_bias
        if i == 0 and slice_input:
            layers.append(USLinear(dim, hidden_dim, bias=bias, slice_in=True, width_range=width_range))
        else:
            layers.append(nn.Linear(dim, hidden_dim, bias=bias))
        layers += [nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
        dim = hidden_dim
    last_sliced = num_layers == 1 and slice_input
    layers.append(USLinear(dim, out_dim, slice_in=True, width_range=width_range) if last_sliced
                  else nn.Linear(dim, out_dim))
    if last_bn:
        layers.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*layers)


def feature_adapter(channels: int, width_range=DEFAULT_WIDTH_RANGE) -> USConv2d:
    """1x1 conv from a sub-network's active channels to the teacher's full channels (feature distillation)."""
    return USConv2d(channels, channels, 1, slice_in=True, slice_out=False, width_range=width_range)
