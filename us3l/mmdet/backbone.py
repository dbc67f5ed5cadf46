"""``US3LResNet``: MMDetection's ResNet interface on a US3L ResNet physically sized for one width.

A detector is fine-tuned at ONE width, so the modules are plain ``nn.Conv2d``/norm layers of that width
(norm from ``norm_cfg``: BN, SyncBN, GN...). Parameter names are torchvision's = mmdet's ``ResNet``
(``backbone.conv1.weight``, ``backbone.layer1.0.bn1.weight``...), so mmdet tooling and converters apply.
``init_cfg=dict(type='Pretrained', checkpoint=..., prefix='backbone.')`` loads one full-width US3L
checkpoint at this width through :mod:`us3l.mmdet.pretrained` (hard error on any mismatch).
"""
from __future__ import annotations

from mmdet.registry import MODELS

from ..models.resnet import stage_channels
from ._resnet_parts import adopt_stem_and_stages, build_trunk, check_stage_args, forward_stages, freeze
from .width_sized import WidthSizedResNetPart


@MODELS.register_module()
class US3LResNet(WidthSizedResNetPart):
    """ResNet backbone at ``width_mult``; arguments mirror ``mmdet.models.ResNet``.

    Args:
        depth: 18, 34, 50 or 101 (must match the pretrained checkpoint).
        width_mult: the width the detector runs at, in (0, 1] and inside the checkpoint's width range.
        num_stages: stages built (C4 detectors: 3, res5 lives in the RoI head).
        out_indices: stages whose outputs ``forward`` returns (0 = layer1, stride 4).
        frozen_stages: -1 nothing frozen, 0 the stem, i the stem and layer1..i (Detectron2 FREEZE_AT - 1).
        norm_cfg / norm_eval: mmcv norm layer; keep BN layers in eval mode while training.
        bn_stats: pretrained BN statistics to start from: ``calibrated`` (this width's) or ``reset``.
    """

    def __init__(self, depth: int = 50, width_mult: float = 1.0, num_stages: int = 4,
                 out_indices=(0, 1, 2, 3), frozen_stages: int = -1, norm_cfg: dict | None = None,
                 norm_eval: bool = True, bn_stats: str = "calibrated", init_cfg=None):
        super().__init__(depth, width_mult, norm_cfg, norm_eval, bn_stats, init_cfg)
        check_stage_args(num_stages, out_indices, frozen_stages)
        self.num_stages, self.out_indices, self.frozen_stages = num_stages, tuple(out_indices), frozen_stages
        trunk = build_trunk(depth, self.width_mult, self.norm_cfg)
        adopt_stem_and_stages(self, trunk, num_stages)
        self._freeze_stages()

    @property
    def out_channels(self) -> tuple[int, ...]:
        """Channels of each returned feature map at this width (what the neck / RPN must take)."""
        chans = stage_channels(self.depth, self.width_mult)
        return tuple(chans[i] for i in self.out_indices)

    def forward(self, x):
        return forward_stages(self, x)

    def _freeze_stages(self) -> None:
        if self.frozen_stages >= 0:
            freeze(self.conv1)
            freeze(self.bn1)
        for i in range(1, self.frozen_stages + 1):
            freeze(getattr(self, f"layer{i}"))
