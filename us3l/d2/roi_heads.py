"""C4 ROI heads whose ``res5`` (the last ResNet stage, run per region) is sized for the US3L width."""
from __future__ import annotations

import torch.nn as nn
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.modeling.roi_heads import Res5ROIHeads

from ..checkpoint.guard import refuse_incomplete_load
from .backbone import LOADER_FIX, make_us3l_stage, stage_spec
from .config import us3l_width


@ROI_HEADS_REGISTRY.register()
class US3LRes5ROIHeads(Res5ROIHeads):
    """Detectron2's ``Res5ROIHeads`` with a width-sized res5; box and mask heads are built for its channels."""

    @classmethod
    def _build_res5_block(cls, cfg):
        if cfg.MODEL.RESNETS.RES5_DILATION != 1:
            raise ValueError("C4 models keep res5 in the ROI heads: MODEL.RESNETS.RES5_DILATION must be 1")
        width = us3l_width(cfg)
        blocks = make_us3l_stage(cfg, 5, width, first_stride=2)
        return nn.Sequential(*blocks), stage_spec(cfg, 5, width)["out"]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        refuse_incomplete_load(self, state_dict, prefix, fix=LOADER_FIX, within="res5.")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
