"""The MMDetection backend of ``tools/export_detector.py``: one width of the slimmable detector as a plain one.

The result is MMDetection's own ``MaskRCNN`` / ``FasterRCNN`` with the width-sized ``US3LResNet``, ``FPN``,
``RPNHead``, ``SingleRoIExtractor``, ``Shared2FCBBoxHead`` and ``FCNMaskHead``, their channel counts written
in the config (rules of :mod:`us3l.detection.export_rules`): no slimmable code at inference. Parameter names
are the same in both detectors, so the weights are prefix slices (``us3l.checkpoint.slice_to_shapes``) with
the BN statistics calibrated for that width.
"""
from __future__ import annotations

import copy
import os

from mmengine.config import Config, ConfigDict

from ..checkpoint import select_width_stats, slice_to_shapes
from ..checkpoint.frameworks import write_mmdet_checkpoint
from ..detection import backbone_stage_channels, neck_head_channels, require_calibrated
from ..models.resnet import stage_channels
from ..ops.width_state import check_width
from ..width import width_range

PLAIN_TYPES = {"SlimmableMaskRCNN": "MaskRCNN", "SlimmableFasterRCNN": "FasterRCNN", "SlimmableFPN": "FPN",
               "SlimmableRPNHead": "RPNHead", "SlimmableSingleRoIExtractor": "SingleRoIExtractor",
               "SlimmableShared2FCBBoxHead": "Shared2FCBBoxHead", "SlimmableFCNMaskHead": "FCNMaskHead"}
SLIMMABLE_ONLY_KEYS = ("slimmable", "width_range")


def _plain(node: dict, **channels) -> dict:
    node = {k: v for k, v in node.items() if k not in SLIMMABLE_ONLY_KEYS}
    node["type"] = PLAIN_TYPES.get(node["type"], node["type"])
    node.update(channels)
    return node


def plain_model_cfg(model_cfg: dict, width: float) -> ConfigDict:
    """The ``model`` config of a plain detector equal to the slimmable ``model_cfg`` at ``width``."""
    m = copy.deepcopy(dict(model_cfg))
    slim = m.pop("slim_neck_and_heads", True)
    for key in ("width_range", "sandwich"):
        m.pop(key, None)
    m["type"] = PLAIN_TYPES[m["type"]]
    bb = m["backbone"]
    depth, out_indices = bb.get("depth", 50), tuple(bb.get("out_indices", (0, 1, 2, 3)))
    m["backbone"] = dict(type="US3LResNet", depth=depth, width_mult=width, num_stages=bb.get("num_stages", 4),
                         out_indices=out_indices, frozen_stages=bb.get("frozen_stages", -1),
                         norm_cfg=dict(type="BN", requires_grad=True), norm_eval=True, bn_stats="calibrated",
                         init_cfg=None)
    stages = backbone_stage_channels(stage_channels(depth, 1.0), width)
    roi, rpn = m["roi_head"], m["rpn_head"]
    full = {"fpn": m["neck"]["out_channels"], "rpn": rpn.get("feat_channels", 256),
            "box_fc": roi["bbox_head"].get("fc_out_channels", 1024)}
    if roi.get("mask_head"):
        full["mask"] = roi["mask_head"].get("conv_out_channels", 256)
    c = neck_head_channels(full, width, slim)
    m["neck"] = _plain(m["neck"], in_channels=[stages[i] for i in out_indices], out_channels=c["fpn"])
    m["rpn_head"] = _plain(rpn, in_channels=c["fpn"], feat_channels=c["rpn"])
    roi = dict(roi)
    roi["bbox_roi_extractor"] = _plain(roi["bbox_roi_extractor"], out_channels=c["fpn"])
    roi["bbox_head"] = _plain(roi["bbox_head"], in_channels=c["fpn"], fc_out_channels=c["box_fc"])
    if roi.get("mask_head"):
        if roi.get("mask_roi_extractor"):
            roi["mask_roi_extractor"] = _plain(roi["mask_roi_extractor"], out_channels=c["fpn"])
        roi["mask_head"] = _plain(roi["mask_head"], in_channels=c["fpn"], conv_out_channels=c["mask"])
    m["roi_head"] = roi
    return ConfigDict(m)


def plain_config(cfg: Config, width: float) -> Config:
    """The whole config (data, evaluation, schedule) of the plain detector at ``width``."""
    out = copy.deepcopy(cfg)
    out.model = plain_model_cfg(cfg.model, width)
    for key in ("model_wrapper_cfg", "load_from", "resume"):
        out.pop(key, None)
    return out


def export_detector(model, cfg: Config, width: float, dst: str) -> tuple[object, str]:
    """Write the plain detector at ``width`` to ``dst`` (``{'state_dict', 'meta'}``) and its config beside it
    (``dst`` with ``.py``); returns ``(plain model in eval mode, config path)``. Refuses an uncalibrated width."""
    from mmdet.registry import MODELS

    w = check_width(width, width_range(model))
    require_calibrated(model, w)
    plain_cfg = plain_config(cfg, w)
    plain = MODELS.build(plain_cfg.model)
    state = select_width_stats(model.state_dict(), w, "calibrated")
    tensors, report = slice_to_shapes(state, {k: v.shape for k, v in plain.state_dict().items()})
    report.raise_if_bad(f"exporting {cfg.model.type} at width {w}")
    plain.load_state_dict(tensors, strict=True)
    write_mmdet_checkpoint(tensors, {"width": w, "exported_from": cfg.model.type}, dst)
    config_path = os.path.splitext(dst)[0] + ".py"
    plain_cfg.dump(config_path)
    return plain.eval(), config_path


def export_detector_file(src: str, dst: str, width: float, config: str, cfg_options: dict | None = None
                         ) -> tuple[object, str]:
    """``tools/export_detector.py SRC DST --width W --config CFG.py`` for MMDetection."""
    from .slimmable_eval import load_slimmable_detector

    model, cfg = load_slimmable_detector(config, src, cfg_options=cfg_options)
    return export_detector(model, cfg, width, dst)
