"""``US3LSlimmableResNet``: the universally slimmable US-ResNet itself as an MMDetection backbone.

Unlike :class:`US3LResNet` (a plain copy sized for one width), this holds the full slimmable model of
:func:`us3l.models.us_resnet` and runs at whatever width ``us3l.set_width`` gives the detector, so one
detector serves every width. Parameter names are ``US3LResNet``'s (torchvision's), which makes exporting
one width a prefix slice. BN layers keep per-width statistics (calibrated after training).
"""
from __future__ import annotations

from mmdet.registry import MODELS
from mmengine.model import BaseModule

from ..checkpoint.guard import refuse_incomplete_load
from ..detection import reset_bn_statistics
from ..models.resnet import stage_channels, us_resnet
from ..ops import DEFAULT_WIDTH_RANGE
from ._resnet_parts import adopt_stem_and_stages, check_stage_args, forward_stages
from .pretrained import LOADER_FIX, load_width_sized, pretrained_cfg


def _check_norm_cfg(norm_cfg) -> None:
    """The US-ResNet has per-width BN (as :func:`us3l.detection.slimmable_norm` makes of BN and SyncBN)."""
    if norm_cfg is not None and norm_cfg.get("type") not in ("BN", "BN2d", "SyncBN"):
        raise ValueError(f"US3LSlimmableResNet: norm_cfg type {norm_cfg.get('type')!r} has no slimmable counterpart; "
                         "use BN or SyncBN (both become per-width BN: batch statistics per process while "
                         "training, statistics calibrated per width afterwards)")


@MODELS.register_module()
class US3LSlimmableResNet(BaseModule):
    """US-ResNet backbone; arguments mirror ``mmdet.models.ResNet`` (``width_range``: the widths it runs at).

    ``init_cfg=dict(type='Pretrained', checkpoint=..., prefix='backbone.')`` loads a full-width US3L
    checkpoint whole (hard error on any mismatch, or when the checkpoint was not trained down to
    ``width_range[0]``). Its BN statistics are not used: training normalises with batch statistics and
    evaluation needs statistics calibrated on the fine-tuned detector.
    """

    def __init__(self, depth: int = 50, num_stages: int = 4, out_indices=(0, 1, 2, 3), frozen_stages: int = -1,
                 width_range=DEFAULT_WIDTH_RANGE, norm_cfg: dict | None = None, init_cfg=None):
        super().__init__(init_cfg)
        _check_norm_cfg(norm_cfg)
        check_stage_args(num_stages, out_indices, frozen_stages)
        self.depth, self.num_stages, self.out_indices = depth, num_stages, tuple(out_indices)
        self.frozen_stages, self.width_range = frozen_stages, tuple(width_range)
        trunk = us_resnet(depth, num_classes=0, width_range=self.width_range)
        adopt_stem_and_stages(self, trunk, num_stages)
        self._freeze_stages()

    @property
    def out_channels(self) -> tuple[int, ...]:
        """Full-width channels of each returned map (what the slimmable neck is built with)."""
        chans = stage_channels(self.depth, 1.0)
        return tuple(chans[i] for i in self.out_indices)

    def forward(self, x):
        return forward_stages(self, x)

    def _freeze_stages(self) -> None:
        """Frozen parameters only: BN layers keep normalising with batch statistics while training, because
        running statistics exist per width and only after calibration."""
        parts = ([self.conv1, self.bn1] if self.frozen_stages >= 0 else [])
        parts += [getattr(self, f"layer{i}") for i in range(1, self.frozen_stages + 1)]
        for part in parts:
            for p in part.parameters():
                p.requires_grad = False

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        refuse_incomplete_load(self, state_dict, prefix, fix=LOADER_FIX)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def init_weights(self):
        cfg = pretrained_cfg(self.init_cfg)
        if cfg is None:
            return super().init_weights()
        # tensors are taken whole (a slimmable model holds full-size tensors); loading "at" the smallest width
        # checks that the checkpoint was trained down to it. The pretrained BN statistics (and counters) are
        # stale for the fine-tuned weights: reset, so that no width passes for calibrated.
        load_width_sized(self, cfg, depth=self.depth, width=self.width_range[0], bn_stats="reset",
                         context=f"{type(self).__name__}(depth={self.depth}, width_range={list(self.width_range)})")
        reset_bn_statistics(self)
        self._is_init = True
