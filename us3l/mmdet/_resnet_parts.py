"""Shared pieces of the ResNet backbones (width-sized and slimmable): norm layers from an mmcv ``norm_cfg``, BN
freezing, the stage arguments, taking over a trunk's stem and stages, and the forward over them."""
from __future__ import annotations

import torch.nn as nn
from mmcv.cnn import build_norm_layer
from torch.nn.modules.batchnorm import _BatchNorm

from ..models.resnet import ARCH_SETTINGS, static_resnet
from ..ops.width_state import check_width

DEFAULT_NORM_CFG = dict(type="BN", requires_grad=True)


def checked_width(width_mult) -> float:
    """A detector width: any value in (0, 1] (the checkpoint's own range is checked when it is loaded)."""
    return check_width(width_mult, (1e-3, 1.0))


def build_trunk(depth: int, width: float, norm_cfg: dict):
    """A plain torchvision-layout ResNet sized for ``width`` with mmcv norm layers (BN, SyncBN, GN...)."""
    if depth not in ARCH_SETTINGS:
        raise ValueError(f"invalid depth {depth} for a US3L ResNet; choose from {sorted(ARCH_SETTINGS)}")
    return static_resnet(depth, width, num_classes=0, norm_layer=lambda c: build_norm_layer(norm_cfg, c)[1])


def norms_to_eval(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, _BatchNorm):
            m.eval()


def freeze(module: nn.Module) -> None:
    module.eval()
    for p in module.parameters():
        p.requires_grad = False


def check_stage_args(num_stages: int, out_indices, frozen_stages: int) -> None:
    """``mmdet.models.ResNet``'s stage arguments, refused with a message when out of range."""
    if not 1 <= num_stages <= 4:
        raise ValueError(f"num_stages must be in 1..4, got {num_stages}")
    if not out_indices or max(out_indices) >= num_stages or min(out_indices) < 0:
        raise ValueError(f"out_indices {tuple(out_indices)} must lie in 0..{num_stages - 1}")
    if not -1 <= frozen_stages <= num_stages:
        raise ValueError(f"frozen_stages must be in -1..{num_stages}, got {frozen_stages}")


def adopt_stem_and_stages(backbone: nn.Module, trunk: nn.Module, num_stages: int) -> None:
    """Register ``trunk``'s stem and first ``num_stages`` stages on ``backbone`` under torchvision's names (so
    parameter names stay mmdet ``ResNet``'s); ``backbone.res_layers`` lists the stage names."""
    for name in ("conv1", "bn1", "relu", "maxpool"):
        backbone.add_module(name, getattr(trunk, name))
    backbone.res_layers = [f"layer{i + 1}" for i in range(num_stages)]
    for name in backbone.res_layers:
        backbone.add_module(name, getattr(trunk, name))


def forward_stages(backbone: nn.Module, x) -> tuple:
    """Stem, then each stage; the outputs of the stages in ``backbone.out_indices``."""
    x = backbone.maxpool(backbone.relu(backbone.bn1(backbone.conv1(x))))
    outs = []
    for i, name in enumerate(backbone.res_layers):
        x = getattr(backbone, name)(x)
        if i in backbone.out_indices:
            outs.append(x)
    return tuple(outs)
