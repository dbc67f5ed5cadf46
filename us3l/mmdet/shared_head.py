"""``US3LResLayer``: the res5 stage of a C4 detector (``roi_head.shared_head.layer4.*``) at one width.

The RoI-head counterpart of mmdet's ``ResLayer`` shared head, built from the same width-sized US3L ResNet
as :class:`US3LResNet`, and loaded from the same full-width checkpoint (its ``layer4.*`` part).
"""
from __future__ import annotations

from mmdet.registry import MODELS

from ..models.resnet import stage_channels
from ._resnet_parts import build_trunk
from .width_sized import WidthSizedResNetPart


@MODELS.register_module()
class US3LResLayer(WidthSizedResNetPart):
    """res5 (``stage=3``, stride 2) of a US3L ResNet at ``width_mult``; see :class:`US3LResNet` for arguments."""

    def __init__(self, depth: int = 50, stage: int = 3, width_mult: float = 1.0, norm_cfg: dict | None = None,
                 norm_eval: bool = True, bn_stats: str = "calibrated", init_cfg=None):
        super().__init__(depth, width_mult, norm_cfg, norm_eval, bn_stats, init_cfg)
        if stage != 3:
            raise ValueError(f"US3LResLayer is the res5 head of C4 detectors (stage=3), got stage={stage}")
        self.stage = stage
        self.layer4 = build_trunk(depth, self.width_mult, self.norm_cfg).layer4

    @property
    def in_channels(self) -> int:
        return stage_channels(self.depth, self.width_mult)[2]

    @property
    def out_channels(self) -> int:
        return stage_channels(self.depth, self.width_mult)[3]

    def forward(self, x):
        return self.layer4(x)
