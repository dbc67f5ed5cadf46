"""Shared pieces of the width-sized ResNet modules: norm layers from an mmcv ``norm_cfg`` and BN freezing."""
from __future__ import annotations

import torch.nn as nn
from mmcv.cnn import build_norm_layer
from torch.nn.modules.batchnorm import _BatchNorm

from ..models.resnet import ARCH_SETTINGS, EXPANSION, static_resnet
from ..ops import active_channels
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


def stage_channels(depth: int, width: float) -> tuple[int, ...]:
    """Output channels of layer1..layer4 at ``width``."""
    exp = EXPANSION[ARCH_SETTINGS[depth][0]]
    return tuple(active_channels(64 * 2 ** i * exp, width) for i in range(4))


def norms_to_eval(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, _BatchNorm):
            m.eval()


def freeze(module: nn.Module) -> None:
    module.eval()
    for p in module.parameters():
        p.requires_grad = False
