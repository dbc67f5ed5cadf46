"""Fixed-width export: a plain PyTorch model with physically smaller tensors, for deployment."""
from __future__ import annotations

import torch.nn as nn

from .bn_calibration import calibrated_widths
from .checkpoint.io import atomic_save
from .checkpoint.model_io import build_model_from_checkpoint
from .checkpoint.slicing import select_width_stats, slice_to_shapes
from .detector_api import refuse_detector
from .models import MobileNetV2, ResNet, arch_of, build_static_model
from .ops import USLinear
from .ops.width_state import check_width
from .width import width_range


def width_state_dict(model: nn.Module, width: float, target: nn.Module, bn_stats: str = "calibrated") -> dict:
    """The tensors ``target`` (a plain model sized for ``width``) takes from slimmable ``model``."""
    state = select_width_stats(model.state_dict(), width, bn_stats, calibrated=calibrated_widths(model))
    sliced, report = slice_to_shapes(state, {k: v.shape for k, v in target.state_dict().items()})
    report.raise_if_bad(f"exporting {arch_of(model)} at width {width}")
    return sliced


def export_static(model: nn.Module, width: float, norm_layer=None) -> nn.Module:
    """Plain ``nn.Conv2d``/``nn.BatchNorm2d``/``nn.Linear`` model (torchvision names) equal to ``model`` at ``width``.

    Needs BN statistics calibrated for ``width`` (:func:`us3l.calibrate_bn`); raises otherwise.
    The result is in eval mode and can be traced or exported to ONNX.
    """
    refuse_detector(model, "us3l.export_static", "export")
    w = check_width(width, width_range(model))
    static = build_static_model(arch_of(model), w, _num_classes(model), getattr(model, "cifar_stem", False),
                                norm_layer)
    static.load_state_dict(width_state_dict(model, w, static), strict=True)
    return static.eval()


def _num_classes(model: nn.Module) -> int:
    head = model.fc if isinstance(model, ResNet) else model.classifier if isinstance(model, MobileNetV2) else None
    if isinstance(head, nn.Sequential):
        head = head[-1]
    return head.out_features if isinstance(head, (nn.Linear, USLinear)) else 0


def export_checkpoint(src: str, dst: str, width: float):
    """Export the backbone of checkpoint ``src`` at ``width`` to ``dst`` (plain state dict + metadata);
    returns ``(static model, metadata)``."""
    model, meta = build_model_from_checkpoint(src)
    static = export_static(model, width)
    atomic_save({"state_dict": static.state_dict(),
                 "meta": {**meta, "width": width, "fixed_width": width, "width_range": [width, width], "static": True}},
                dst)
    return static, meta


def write_onnx(static: nn.Module, path: str, image_size: int = 224) -> None:
    """An ONNX graph of a fixed-width model (dynamic batch)."""
    import torch

    x = torch.randn(1, 3, image_size, image_size)
    torch.onnx.export(static, (x,), path, input_names=["images"], output_names=["features"],
                      dynamic_axes={"images": {0: "batch"}}, dynamo=False)
