"""What the MMDetection modules sized for one width share: settings checks, ``norm_eval``, Pretrained loading."""
from __future__ import annotations

from mmengine.model import BaseModule

from ..checkpoint import BN_STATS_POLICIES
from ..checkpoint.guard import refuse_incomplete_load
from ._resnet_parts import DEFAULT_NORM_CFG, checked_width, norms_to_eval
from .pretrained import LOADER_FIX, load_width_sized, pretrained_cfg


class WidthSizedResNetPart(BaseModule):
    """Base of :class:`US3LResNet` and :class:`US3LResLayer`: one width, one full-width checkpoint."""

    def __init__(self, depth: int, width_mult: float, norm_cfg: dict | None, norm_eval: bool, bn_stats: str,
                 init_cfg=None):
        super().__init__(init_cfg)
        if bn_stats not in BN_STATS_POLICIES:
            raise ValueError(f"bn_stats must be one of {BN_STATS_POLICIES}, got {bn_stats!r}")
        self.depth, self.width_mult = depth, checked_width(width_mult)
        self.norm_eval, self.bn_stats = norm_eval, bn_stats
        self.norm_cfg = dict(norm_cfg or DEFAULT_NORM_CFG)

    def _freeze_stages(self) -> None:
        """Frozen parts, re-applied by ``train()`` (nothing by default)."""

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            norms_to_eval(self)
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        refuse_incomplete_load(self, state_dict, prefix, fix=LOADER_FIX)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def init_weights(self):
        cfg = pretrained_cfg(self.init_cfg)
        if cfg is None:
            return super().init_weights()
        load_width_sized(self, cfg, depth=self.depth, width=self.width_mult, bn_stats=self.bn_stats,
                         context=f"{type(self).__name__}(depth={self.depth}, width_mult={self.width_mult})",
                         norms_frozen=self.norm_eval or getattr(self, "frozen_stages", -1) >= 0)
        self._is_init = True
