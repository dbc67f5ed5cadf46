"""Loading a state dict into a slimmable model all-or-nothing, and saving one with its metadata."""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn

from ..bn_calibration import calibrated_widths, guard_uncalibrated_full_width
from ..models import arch_of, build_us_model
from ..ops.norm import WIDTH_STATS_RE
from ..width import width_range
from .io import load_backbone, save_backbone
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
    """Save a slimmable backbone (classifier dropped) in the ``us3l.backbone/1`` format.

    ``meta["calibrated_widths"]`` says which statistics are real: 1.0's buffers always travel, and are
    refused by every consumer until 1.0 is listed (calibrated).
    """
    calibrated = calibrated_widths(model)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(("fc.", "classifier."))}
    meta = {"arch": arch_of(model), "cifar_stem": bool(getattr(model, "cifar_stem", False)),
            "width_range": list(width_range(model)), "calibrated_widths": calibrated, **extra_meta}
    save_backbone(state, meta, path)


def build_model_from_checkpoint(path: str, width: float | None = None, device="cpu",
                                report: LoadReport | None = None) -> tuple[nn.Module, dict]:
    """The slimmable backbone (no classifier) of any backbone checkpoint, with its weights; ``(model, meta)``.

    Widths the checkpoint holds no statistics for stay uncalibrated, 1.0 included: evaluating there raises
    :class:`us3l.UncalibratedWidthError` until :func:`us3l.calibrate_bn` runs. ``width``: the width of a
    reference calibration file whose name does not say it.
    """
    state, meta = load_backbone(path, width=width, report=report)
    if meta.get("fixed_width") is not None:
        raise CheckpointError(f"{path} holds a backbone already sliced to width {meta['fixed_width']} (a fixed-"
                              "width export): it loads into a width-sized detector, not into a slimmable model")
    model = build_us_model(meta["arch"], 0, meta["cifar_stem"], tuple(meta["width_range"]))
    own = model.state_dict()
    full_calibrated = 1.0 in meta["calibrated_widths"]
    for k, v in own.items():  # buffers the checkpoint may lack: placeholders guarded below, counters
        if k not in state and (k.endswith("num_batches_tracked")
                               or (not full_calibrated and k.endswith(("running_mean", "running_var")))):
            state[k] = v
    load_state_dict_checked(model, state, f"loading {path}")
    if not full_calibrated:
        guard_uncalibrated_full_width(model)
    else:  # files that carry no batch counter (the reference's): 1.0's statistics are calibrated all the same
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d) and int(m.num_batches_tracked) == 0:
                m.num_batches_tracked.fill_(1)
    return model.to(device), meta


def _arch_or_type(model: nn.Module) -> str:
    try:
        return arch_of(model)
    except ValueError:
        return type(model).__name__


__all__ = ["load_state_dict_checked", "save_model_backbone", "build_model_from_checkpoint", "CheckpointError"]
