"""Re-estimating BN statistics for one width ("BN calibration"), stored per width in the model.

A slimmable network trained with batch statistics has no valid running statistics for any width; each
width must be calibrated before evaluation: train mode (batch statistics), no gradients, an equal-weight
(cumulative) average of the per-batch statistics, summed across processes when distributed.
"""
from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterable

import torch
import torch.distributed as dist
import torch.nn as nn

from .detector_api import refuse_detector
from .ops import USBatchNorm2d
from .ops.norm import UncalibratedWidthError
from .width import width as width_ctx

_log = logging.getLogger("us3l.calibration")
PROGRESS_SECONDS = 10.0  # a progress line this often while a width is calibrated (INFO)


def default_batch_to_input(batch) -> torch.Tensor:
    """Images from a batch: a tensor, ``(images, labels)``, or ``([view1, view2, ...], labels)``."""
    while isinstance(batch, (list, tuple)):
        batch = batch[0]
    if isinstance(batch, dict):
        batch = batch["image"]
    return batch


@torch.no_grad()
def calibrate_bn(model: nn.Module, loader: Iterable, width: float, num_batches: int | None = None,
                 batch_to_input: Callable = default_batch_to_input, device: torch.device | str | None = None):
    """Calibrate BN statistics of ``model`` at ``width`` from ``num_batches`` batches (all if None).

    The statistics are stored for that width only (``us3l.calibrated_widths`` lists them). The model's
    width and train/eval mode are restored afterwards. Returns the number of batches used.
    """
    refuse_detector(model, "us3l.calibrate_bn", "calibrate")
    bns = [m for m in model.modules() if isinstance(m, USBatchNorm2d)]
    if not bns:
        raise ValueError(f"{type(model).__name__} has no slimmable BatchNorm layers to calibrate")
    if num_batches is not None and num_batches <= 0:
        raise ValueError(f"num_batches must be positive, got {num_batches}")
    if device is None:
        device = next(model.parameters()).device
    was_training = model.training
    used = 0
    with width_ctx(model, width) as w:
        for bn in bns:
            c = bn.active_features()
            zeros = torch.zeros(c, device=bn.weight.device, dtype=torch.float64)
            bn._calibration = {"mean": zeros.clone(), "var": zeros.clone(), "count": 0}
        try:
            model.train()
            batches = loader if num_batches is None else itertools.islice(loader, num_batches)
            total = "all" if num_batches is None else num_batches
            _log.info("BN calibration at width %g: %s batches", w, total)
            shown = time.monotonic()
            for batch in batches:
                model(batch_to_input(batch).to(device, non_blocking=True))
                used += 1
                if time.monotonic() - shown > PROGRESS_SECONDS:  # a long calibration says where it is
                    shown = time.monotonic()
                    _log.info("BN calibration at width %g: %d / %s batches", w, used, total)
            _finish(bns, w, used)
        finally:
            for bn in bns:
                bn._calibration = None
            model.train(was_training)
    return used


def _finish(bns: list[USBatchNorm2d], width: float, used: int) -> None:
    distributed = dist.is_available() and dist.is_initialized()
    total = torch.tensor([float(used)], dtype=torch.float64, device=bns[0].weight.device)
    if distributed:
        dist.all_reduce(total)
    if total.item() == 0:
        raise ValueError("BN calibration saw no batches: the loader is empty")
    for bn in bns:
        stats = torch.stack([bn._calibration["mean"], bn._calibration["var"]])
        if bn._calibration["count"] != used:
            raise RuntimeError("a BN layer was skipped during calibration (its forward did not run every batch)")
        if distributed:
            dist.all_reduce(stats)
        stats = (stats / total).to(bn.weight.dtype)
        bn.set_width_stats(width, stats[0], stats[1])
        if width >= 1.0:
            bn.num_batches_tracked.fill_(int(total.item()))
            guard = bn.__dict__.pop("_us3l_full_width_guard", None)
            if guard is not None:
                guard.remove()


def calibrated_widths(model: nn.Module) -> list[float]:
    """Widths for which every slimmable BN layer holds calibrated statistics.

    1.0 is listed once its standard running statistics have been estimated (``num_batches_tracked > 0``).
    """
    bns = [m for m in model.modules() if isinstance(m, USBatchNorm2d)]
    if not bns:
        return []
    common = set(bns[0].calibrated_widths())
    for bn in bns[1:]:
        common &= set(bn.calibrated_widths())
    if all(int(bn.num_batches_tracked) > 0 for bn in bns):
        common.add(1.0)
    return sorted(common)


def _refuse_uncalibrated_full_width(bn: USBatchNorm2d, args) -> None:
    if not bn.training and bn._calibration is None and bn.width_mult >= 1.0:
        raise UncalibratedWidthError(
            "BN statistics for width 1.0 are not calibrated (the checkpoint holds none); calibrate it first: "
            "us3l.calibrate_bn(model, loader, 1.0) or tools/calibrate_bn.py")


def guard_uncalibrated_full_width(model: nn.Module) -> None:
    """Make evaluation at width 1.0 fail until 1.0 is calibrated.

    Width 1.0 keeps the standard ``running_mean``/``running_var`` buffers, which always exist; a model loaded
    from a checkpoint without statistics there (pre-training, the reference code's) would otherwise
    normalize with placeholder mean 0 / var 1 in silence. Calibrating 1.0 lifts the guard.
    """
    for bn in model.modules():
        if isinstance(bn, USBatchNorm2d) and "_us3l_full_width_guard" not in bn.__dict__:
            bn.num_batches_tracked.zero_()
            bn.__dict__["_us3l_full_width_guard"] = bn.register_forward_pre_hook(_refuse_uncalibrated_full_width)
