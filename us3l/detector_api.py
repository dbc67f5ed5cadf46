"""Where a detector goes when it is handed to a backbone-level function.

``us3l.calibrate_bn`` and ``us3l.export_static`` serve backbones and classifiers (an image batch in, one
network's BN layers); a detector needs its framework's twin, which knows its data loader, preprocessing and
heads. Recognised by duck typing (this module imports no framework), so the error can name the call that works.
"""
from __future__ import annotations

import torch.nn as nn

# what to call instead, per framework: (calibration, export)
DETECTOR_CALLS = {
    "Detectron2": ("us3l.d2.calibrate_widths(model, cfg, widths, num_batches)",
                   "us3l.d2.export_plain_detector(model, cfg, width)"),
    "MMDetection": ("us3l.mmdet.calibrate_widths(model, cfg, widths, num_batches)",
                    "us3l.mmdet.export_detector(model, cfg, width, dst)"),
}
TOOLS = {"calibrate": "tools/calibrate_detector.py", "export": "tools/export_detector.py"}


def detector_framework(model: nn.Module) -> str | None:
    """``"Detectron2"`` / ``"MMDetection"`` for a two-stage detector of that framework (DDP-wrapped too), else None."""
    model = getattr(model, "module", model)
    if hasattr(model, "proposal_generator") and hasattr(model, "roi_heads"):
        return "Detectron2"
    if hasattr(model, "rpn_head") and hasattr(model, "roi_head"):
        return "MMDetection"
    return None


def refuse_detector(model: nn.Module, function: str, action: str) -> None:
    """Raise ``TypeError`` naming the detector call for ``action`` ("calibrate" or "export") if ``model`` is one."""
    framework = detector_framework(model)
    if framework is None:
        return
    call = DETECTOR_CALLS[framework][0 if action == "calibrate" else 1]
    raise TypeError(f"{function} takes a backbone or classifier; this is a {framework} detector: use {call} "
                    f"(or {TOOLS[action]} on its checkpoint)")
