"""One width for a whole MMDetection config: every channel count that follows the backbone is derived from it.

A US3L detector at width ``w`` has a narrower backbone, so the FPN inputs (and, in C4 models, the RPN, the
RoI extractor and the heads after res5) change with ``w``. ``apply_width`` rewrites them from the backbone's
``width_mult``; ``check_width_consistency`` catches a built model whose parts disagree (e.g. a width set
with ``--cfg-options`` on mmdet's own tools, which do not call ``apply_width``).
"""
from __future__ import annotations

import torch.nn as nn

from ..models.resnet import stage_channels
from ..width import width_tag
from ._resnet_parts import checked_width

BACKBONE_TYPES = ("US3LResNet",)
SLIMMABLE_BACKBONE = "US3LSlimmableResNet"


def _evaluators(cfg):
    for key in ("val_evaluator", "test_evaluator"):
        ev = cfg.get(key)
        for e in (ev if isinstance(ev, (list, tuple)) else [ev] if ev else []):
            yield e


def apply_width(cfg, width: float | None = None) -> float:
    """Set (optionally) and propagate the backbone width through a detector config in place; returns it."""
    model = cfg.model
    bb = model.backbone
    if bb.get("type") == SLIMMABLE_BACKBONE:  # one detector for every width: nothing to propagate
        if width is not None:
            raise ValueError("a slimmable detector is trained at every width of model.width_range and evaluated at "
                             "any width (tools/eval_widths.py --widths ...): --width does not apply")
        return float(model.get("width_range", (0.25, 1.0))[1])
    if bb.get("type") not in BACKBONE_TYPES:
        raise ValueError(f"model.backbone.type is {bb.get('type')!r}, not a US3L backbone {BACKBONE_TYPES}")
    if width is not None:
        bb.width_mult = width
    w = checked_width(bb.get("width_mult", 1.0))
    bb.width_mult = w
    depth = bb.get("depth", 50)
    chans = stage_channels(depth, w)
    outs = [chans[i] for i in bb.get("out_indices", (0, 1, 2, 3))]
    if model.get("neck"):
        model.neck.in_channels = outs
    roi = model.get("roi_head") or {}
    head = roi.get("shared_head")
    if head:  # C4: the RPN and RoI extractor read res4, the box/mask heads read res5
        if head.get("type") != "US3LResLayer":
            raise ValueError("a C4 US3L detector needs roi_head.shared_head.type='US3LResLayer', "
                             f"got {head.get('type')!r}")
        head.width_mult, head.depth = w, depth
        rpn = model.get("rpn_head")
        if rpn:
            follows = rpn.get("feat_channels") == rpn.get("in_channels")
            rpn.in_channels = chans[2]
            if follows:  # Detectron2's StandardRPNHead keeps the input width in its 3x3 conv
                rpn.feat_channels = chans[2]
        roi.bbox_roi_extractor.out_channels = chans[2]
        roi.bbox_head.in_channels = chans[3]
        if roi.get("mask_head") and not roi.get("mask_roi_extractor"):
            roi.mask_head.in_channels = chans[3]
    for ev in _evaluators(cfg):
        ev.prefix = width_tag(w)
    return w


def detector_width(model: nn.Module) -> float | None:
    """Width of the US3L backbone inside a built detector (``None`` if it has none)."""
    from .backbone import US3LResNet
    for m in model.modules():
        if isinstance(m, US3LResNet):
            return m.width_mult
    return None


def check_width_consistency(model: nn.Module) -> None:
    """Raise a clear error when the neck / C4 head / RPN of a built detector does not take the backbone's width."""
    from .backbone import US3LResNet
    from .shared_head import US3LResLayer
    model = getattr(model, "module", model)
    bb = next((m for m in model.modules() if isinstance(m, US3LResNet)), None)
    if bb is None:
        return
    problems = []
    neck = getattr(model, "neck", None)
    if neck is not None and hasattr(neck, "in_channels") and list(neck.in_channels) != list(bb.out_channels):
        problems.append(f"neck.in_channels={list(neck.in_channels)} but the backbone gives {list(bb.out_channels)}")
    for m in model.modules():
        if isinstance(m, US3LResLayer) and m.width_mult != bb.width_mult:
            problems.append(f"the C4 shared head has width {m.width_mult}, the backbone {bb.width_mult}")
    rpn = getattr(model, "rpn_head", None)
    if neck is None and rpn is not None and getattr(rpn, "in_channels", None) not in (None, bb.out_channels[-1]):
        problems.append(f"rpn_head.in_channels={rpn.in_channels} but the backbone gives {bb.out_channels[-1]}")
    if problems:
        raise ValueError(f"the detector's parts disagree on the width {bb.width_mult}: " + "; ".join(problems)
                         + ". Set the width with us3l.mmdet.apply_width (the --width option of "
                         "projects/detection/mmdet_train.py / mmdet_test.py), which updates every channel count")
