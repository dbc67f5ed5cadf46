"""The slimmable heads of a Detectron2 detector (registered; select them in a config next to
:mod:`.slimmable_backbone`'s backbone).

* RPN head ``US3LSlimmableRPNHead``: Detectron2's ``StandardRPNHead``, hidden conv slimmed, anchor outputs full;
* ROI heads ``US3LSlimmableROIHeads``: Detectron2's ``StandardROIHeads`` whose box head (``FastRCNNConvFCHead``:
  convs, fcs; fc1 sliced channel-major after the flatten), box predictor (input sliced, class/box outputs full) and
  mask head (``MaskRCNNConvUpsampleHead``: convs, deconv, predictor input) are slimmed.

``MODEL.US3L.SLIM_NECK_HEADS: False`` keeps them at full width.
"""
from __future__ import annotations

from detectron2.config import configurable
from detectron2.modeling import ROI_HEADS_REGISTRY, RPN_HEAD_REGISTRY
from detectron2.modeling.proposal_generator.rpn import StandardRPNHead
from detectron2.modeling.roi_heads import StandardROIHeads
from detectron2.modeling.roi_heads.box_head import FastRCNNConvFCHead
from detectron2.modeling.roi_heads.mask_head import MaskRCNNConvUpsampleHead

from ..detection import slimmify
from ..width import set_width
from .config import us3l_width
from .slimmable_backbone import cfg_width_range


@RPN_HEAD_REGISTRY.register()
class US3LSlimmableRPNHead(StandardRPNHead):
    """``StandardRPNHead`` whose hidden conv(s) slim with the width; objectness / deltas stay full (per anchor)."""

    @configurable
    def __init__(self, *, slim: bool = True, width_range=(0.25, 1.0), width: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        if slim:
            slimmify(self, keep_out=["objectness_logits", "anchor_deltas"], width_range=width_range)
            set_width(self, width)  # built at the backbone's width, so the detector runs as built

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret.update(slim=cfg.MODEL.US3L.SLIM_NECK_HEADS, width_range=cfg_width_range(cfg), width=us3l_width(cfg))
        return ret


@ROI_HEADS_REGISTRY.register()
class US3LSlimmableROIHeads(StandardROIHeads):
    """``StandardROIHeads`` whose box head, box predictor (input only) and mask head slim with the width.

    Built from a config (``MODEL.US3L.SLIM_NECK_HEADS``) or, as Detectron2's LazyConfig does, from explicit
    heads plus ``slim`` / ``width_range`` / ``width``; either way the heads are slimmed here, once.
    """

    @configurable
    def __init__(self, *, slim: bool = True, width_range=(0.25, 1.0), width: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        if not slim:
            return
        width_range = tuple(float(v) for v in width_range)
        head, predictor = self.box_head, self.box_predictor
        if type(head) is not FastRCNNConvFCHead:
            raise ValueError(f"slimmable ROI heads support the box head FastRCNNConvFCHead, got {type(head).__name__}")
        res = self.box_pooler.output_size
        area = res[0] * res[1] if isinstance(res, (tuple, list)) else res * res
        slimmify(head, flatten={"fc1": area} if head.fcs else {}, width_range=width_range)
        spatial = 1 if head.fcs else area  # a head without fcs hands the predictor a C*H*W flatten
        slimmify(predictor, keep_out=["cls_score", "bbox_pred"],
                 flatten={"cls_score": spatial, "bbox_pred": spatial} if spatial > 1 else {}, width_range=width_range)
        parts = [head, predictor]
        if self.mask_on:
            if type(self.mask_head) is not MaskRCNNConvUpsampleHead:
                raise ValueError("slimmable ROI heads support the mask head MaskRCNNConvUpsampleHead, got "
                                 f"{type(self.mask_head).__name__}")
            slimmify(self.mask_head, keep_out=["predictor"], width_range=width_range)
            parts.append(self.mask_head)
        for module in parts:
            set_width(module, width)

    @classmethod
    def from_config(cls, cfg, input_shape):
        if cfg.MODEL.KEYPOINT_ON:
            raise ValueError("slimmable ROI heads do not support keypoint heads")
        ret = super().from_config(cfg, input_shape)
        ret.update(slim=cfg.MODEL.US3L.SLIM_NECK_HEADS, width_range=cfg_width_range(cfg), width=us3l_width(cfg))
        return ret
