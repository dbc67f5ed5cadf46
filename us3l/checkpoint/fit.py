"""Fitting ONE full-width backbone checkpoint to a module sized for one width: the decision both detection
plugins share (Detectron2's loader and MMDetection's ``init_weights`` only place the result under their
own prefixes).

Steps: architecture and stem check -> width inside the pre-trained range (a fixed-width file: exactly its
width) -> this width's norm statistics (calibrated or reset; none for GroupNorm) -> BN counters kept from
the module -> prefix slice of every tensor -> a :class:`LoadReport` that raises on any mismatch.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from ..ops.width_state import DEFAULT_WIDTH_RANGE
from .report import CheckpointError, LoadReport
from .slicing import select_width_stats, slice_to_shapes

_STATS = re.compile(r"(running_mean|running_var|num_batches_tracked)(_w\d{4})?$")


def check_detection_backbone(meta: Mapping, depth: int | None = None, context: str = "", model: str = "") -> None:
    """A detection trunk is an ImageNet-stem ResNet (of ``depth`` when given; ``model`` says how the
    framework's config names it)."""
    arch = str(meta.get("arch", ""))
    where = f"{context}: " if context else ""
    if not arch.startswith("resnet"):
        raise CheckpointError(f"{where}only ResNet backbones transfer to the detection plugins, got {arch!r}")
    if depth is not None and arch != f"resnet{depth}":
        model = model or f"resnet{depth}"
        raise CheckpointError(f"{where}the checkpoint is a {arch} backbone but the model is {model}; "
                              "use a checkpoint of the same depth (or set the model's depth to match)")
    if meta.get("cifar_stem"):
        raise CheckpointError(f"{where}this backbone has a CIFAR stem (3x3 conv, no max-pool); detection needs "
                              "the ImageNet stem (7x7 conv + max-pool). Pre-train with the ImageNet stem")


def check_width_in_range(meta: Mapping, width: float, context: str = "") -> None:
    where = f"{context}: " if context else ""
    fixed = meta.get("fixed_width")
    if fixed is not None:
        if abs(float(width) - float(fixed)) > 1e-9:
            raise CheckpointError(f"{where}the checkpoint holds a backbone already sliced to width {fixed} (a "
                                  f"fixed-width export); it loads only at width {fixed}, not {width}. Use the "
                                  "full-width checkpoint for other widths")
        return
    lo, hi = (float(v) for v in meta.get("width_range", DEFAULT_WIDTH_RANGE))
    if not lo - 1e-9 <= width <= hi + 1e-9:
        raise CheckpointError(f"{where}width {width} is outside the width range [{lo}, {hi}] this backbone was "
                              "pre-trained for")


def fit_backbone(state: Mapping[str, torch.Tensor], meta: Mapping, own: Mapping[str, torch.Tensor], *,
                 width: float, bn_stats: str = "calibrated", depth: int | None = None, context: str = "",
                 model: str = "", report: LoadReport | None = None) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """The tensors of ``own`` (a module's state dict, names as in ``state``) taken from a backbone checkpoint.

    ``state``/``meta`` as :func:`us3l.checkpoint.load_backbone` returns them (or renamed alike); parts of
    the backbone the module does not hold (``layer4`` of a C4 trunk) are dropped and listed. Raises
    :class:`CheckpointError` on architecture, width or key mismatches and
    :class:`us3l.UncalibratedWidthError` when ``bn_stats="calibrated"`` and the width is not calibrated.
    """
    report = report if report is not None else LoadReport()
    check_detection_backbone(meta, depth, context, model)
    check_width_in_range(meta, width, context)
    tensors = {k: torch.as_tensor(v) for k, v in state.items()}
    if any(k.endswith("running_mean") for k in own):
        tensors = select_width_stats(tensors, width, bn_stats, [float(w) for w in meta.get("calibrated_widths", [])],
                                     native_width=float(meta.get("fixed_width", 1.0)))
    else:  # GroupNorm: BN statistics have no use
        tensors = {k: v for k, v in tensors.items() if not _STATS.search(k)}
    owned_parts = {k.split(".", 1)[0] for k in own}
    for k in [k for k in tensors if k.split(".", 1)[0] not in owned_parts]:
        report.dropped.append(f"{k} (a part this module does not hold)")
        del tensors[k]
    for k in [k for k in tensors if k.endswith("num_batches_tracked") and k not in own]:
        del tensors[k]  # FrozenBN keeps no counter
    for k, v in own.items():  # a counter absent from the checkpoint carries no information: keep the module's
        if k.endswith("num_batches_tracked") and k not in tensors:
            tensors[k] = v
    sliced, fitted = slice_to_shapes(tensors, {k: v.shape for k, v in own.items()})
    report.loaded += fitted.loaded
    report.sliced += fitted.sliced
    report.missing += fitted.missing
    report.unexpected += fitted.unexpected
    report.mismatched += fitted.mismatched
    return sliced, report
