"""``US3LResLayer``: the res5 stage of a C4 detector (``roi_head.shared_head.layer4.*``) at one width.

The RoI-head counterpart of mmdet's ``ResLayer`` shared head, built from the same width-sized US3L ResNet
as :class:`US3LResNet`, and loaded from the same full-width checkpoint (its ``layer4.*`` part).
"""
from __future__ import annotations

from mmdet.registry import MODELS
from mmengine.model import BaseModule

from ..checkpoint import BN_STATS_POLICIES
from ._resnet_parts import DEFAULT_NORM_CFG, build_trunk, checked_width, norms_to_eval, stage_channels
from .pretrained import load_width_sized, pretrained_cfg


@MODELS.register_module()
class US3LResLayer(BaseModule):
    """res5 (``stage=3``, stride 2) of a US3L ResNet at ``width_mult``; see :class:`US3LResNet` for arguments."""

    def __init__(self, depth: int = 50, stage: int = 3, width_mult: float = 1.0, norm_cfg: dict | None = None,
                 norm_eval: bool = True, bn_stats: str = "calibrated", init_cfg=None):
        super().__init__(init_cfg)
        if stage != 3:
            raise ValueError(f"US3LResLayer is the res5 head of C4 detectors (stage=3), got stage={stage}")
        if bn_stats not in BN_STATS_POLICIES:
            raise ValueError(f"bn_stats must be one of {BN_STATS_POLICIES}, got {bn_stats!r}")
        self.depth, self.stage, self.width_mult = depth, stage, checked_width(width_mult)
        self.norm_eval, self.bn_stats = norm_eval, bn_stats
        self.norm_cfg = dict(norm_cfg or DEFAULT_NORM_CFG)
        self.layer4 = build_trunk(depth, self.width_mult, self.norm_cfg).layer4

    @property
    def in_channels(self) -> int:
        return stage_channels(self.depth, self.width_mult)[2]

    @property
    def out_channels(self) -> int:
        return stage_channels(self.depth, self.width_mult)[3]

    def forward(self, x):
        return self.layer4(x)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.norm_eval:
            norms_to_eval(self)
        return self

    def init_weights(self):
        cfg = pretrained_cfg(self.init_cfg)
        if cfg is None:
            return super().init_weights()
        load_width_sized(self, cfg, depth=self.depth, width=self.width_mult, bn_stats=self.bn_stats,
                         context=f"US3LResLayer(depth={self.depth}, width_mult={self.width_mult})")
        self._is_init = True
