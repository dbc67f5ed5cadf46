"""Loading a state dict into a slimmable model all-or-nothing, and saving one with its metadata."""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn

from ..bn_calibration import calibrated_widths
from ..models import arch_of
from ..ops.norm import WIDTH_STATS_RE
from ..width import width_range
from .io import save_backbone
from .report import CheckpointError, LoadReport


def load_state_dict_checked(model: nn.Module, state: Mapping[str, torch.Tensor], context: str = "") -> LoadReport:
    """``load_state_dict(strict=True)`` that checks EVERY key and shape first, so a failure changes nothing.

    (PyTorch copies the matching tensors before it raises on the others, leaving a half-loaded model.)
    Per-width BN statistics are accepted when their size fits their width.
    """
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()
                if not WIDTH_STATS_RE.match(k.rsplit(".", 1)[-1])}
    report = LoadReport()
    for name, tensor in state.items():
        if WIDTH_STATS_RE.match(name.rsplit(".", 1)[-1]):
            continue  # validated against its width by USBatchNorm2d's load hook
        if name not in expected:
            report.unexpected.append(name)
        elif tuple(tensor.shape) != expected[name]:
            report.mismatched.append(f"{name}: checkpoint {tuple(tensor.shape)} vs model {expected[name]}")
        else:
            report.loaded.append(name)
    report.missing = [k for k in expected if k not in state]
    arch = _arch_or_type(model)
    report.raise_if_bad(context or f"loading a state dict into {arch}")
    result = model.load_state_dict(dict(state), strict=True)
    del result
    return report


def save_model_backbone(model: nn.Module, path: str, **extra_meta) -> None:
    """Save a slimmable backbone (classifier dropped) in the ``us3l.backbone/1`` format."""
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(("fc.", "classifier."))}
    meta = {"arch": arch_of(model), "cifar_stem": bool(getattr(model, "cifar_stem", False)),
            "width_range": list(width_range(model)), "calibrated_widths": calibrated_widths(model), **extra_meta}
    save_backbone(state, meta, path)


def load_slimmable_backbone(path: str, device="cpu") -> tuple[nn.Module, dict]:
    """The slimmable backbone (no classifier) a checkpoint describes, with its weights: ``(model, meta)``."""
    from ..models import build_us_model
    from .io import load_backbone

    state, meta = load_backbone(path)
    model = build_us_model(meta["arch"], 0, meta["cifar_stem"], tuple(meta.get("width_range", (0.25, 1.0))))
    load_state_dict_checked(model, state, f"loading {path}")
    return model.to(device), meta


def _arch_or_type(model: nn.Module) -> str:
    try:
        return arch_of(model)
    except ValueError:
        return type(model).__name__


__all__ = ["load_state_dict_checked", "load_slimmable_backbone", "save_model_backbone", "CheckpointError"]
