"""Export of a universally slimmable Detectron2 detector at one width: a PLAIN detector (Detectron2's registered
components, the channel counts of :mod:`us3l.detection.export_rules` written into its config) with the slimmable
one's outputs at that width."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..checkpoint import CheckpointError
from ..checkpoint.keymaps import tv_to_d2
from ..detection import neck_head_channels, require_calibrated
from .evaluation import unwrap
from .slimmable_backbone import TRUNK_PREFIX


def export_channels(cfg, width: float) -> dict[str, int]:
    """Detectron2 config values of the neck/head channel counts at ``width`` (the rule of ``us3l.detection``)."""
    full = {"MODEL.FPN.OUT_CHANNELS": cfg.MODEL.FPN.OUT_CHANNELS,
            "MODEL.ROI_BOX_HEAD.FC_DIM": cfg.MODEL.ROI_BOX_HEAD.FC_DIM,
            "MODEL.ROI_BOX_HEAD.CONV_DIM": cfg.MODEL.ROI_BOX_HEAD.CONV_DIM,
            "MODEL.ROI_MASK_HEAD.CONV_DIM": cfg.MODEL.ROI_MASK_HEAD.CONV_DIM}
    out = neck_head_channels(full, width, cfg.MODEL.US3L.SLIM_NECK_HEADS)
    rpn = list(cfg.MODEL.RPN.CONV_DIMS)
    if any(d != -1 for d in rpn):
        scaled = neck_head_channels({str(i): d for i, d in enumerate(rpn) if d != -1}, width,
                                    cfg.MODEL.US3L.SLIM_NECK_HEADS)
        out["MODEL.RPN.CONV_DIMS"] = [d if d == -1 else scaled[str(i)] for i, d in enumerate(rpn)]
    return out


def plain_detector_cfg(cfg, width: float):
    """The config of a PLAIN Detectron2 detector equal to the slimmable ``cfg`` at ``width``.

    Plain registered components only: the width-sized ``build_us3l_resnet_fpn_backbone`` (Detectron2's own
    ResNet at ``MODEL.US3L.WIDTH_MULT``), Detectron2's FPN, ``StandardRPNHead``, ``StandardROIHeads`` with their
    channel counts written in. BN keeps the calibrated statistics of ``width`` (``RESNETS.NORM BN``).
    """
    from .config import us3l_width as _check

    out = cfg.clone()
    out.defrost()
    out.MODEL.BACKBONE.NAME = "build_us3l_resnet_fpn_backbone"
    out.MODEL.RESNETS.NORM = "BN"
    if out.MODEL.FPN.NORM == "SyncBN":
        out.MODEL.FPN.NORM = "BN"
    out.MODEL.RPN.HEAD_NAME = "StandardRPNHead"
    out.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    out.MODEL.US3L.WIDTH_MULT = float(width)
    out.MODEL.US3L.SANDWICH.ENABLED = False
    for key, value in export_channels(cfg, width).items():
        node = out
        *path, leaf = key.split(".")
        for p in path:
            node = node[p]
        node[leaf] = value
    out.MODEL.WEIGHTS = ""
    _check(out)
    return out


def plain_state_dict(model: nn.Module, width: float, plain_model: nn.Module) -> dict[str, torch.Tensor]:
    """The slimmable detector's tensors at ``width``, renamed and prefix-sliced to ``plain_model``'s shapes."""
    from ..checkpoint import select_width_stats, slice_to_shapes

    net = unwrap(model)
    require_calibrated(net, width)
    state = select_width_stats(net.state_dict(), width, "calibrated")
    renamed = {}
    for k, v in state.items():
        if k.startswith(TRUNK_PREFIX):
            d2 = tv_to_d2(k[len(TRUNK_PREFIX):])
            if d2 is None:
                raise CheckpointError(f"export: {k} is not a ResNet trunk tensor")
            k = TRUNK_PREFIX + d2
        renamed[k] = v
    shapes = {k: v.shape for k, v in plain_model.state_dict().items()}
    sliced, report = slice_to_shapes(renamed, shapes)
    report.raise_if_bad(f"exporting the slimmable detector at width {width}")
    return sliced


def export_plain_detector(model: nn.Module, cfg, width: float):
    """``(plain_model, plain_cfg)``: a plain Detectron2 detector with the slimmable one's outputs at ``width``."""
    from detectron2.modeling import build_model

    pcfg = plain_detector_cfg(cfg, width)
    pcfg.MODEL.DEVICE = "cpu"
    plain = build_model(pcfg)
    plain.load_state_dict(plain_state_dict(model, width, plain), strict=True)
    return plain.eval(), pcfg
