"""BN statistics of a slimmable detector: calibrated per width after training, and ONE rule when they are missing.

While training, every slimmable BN normalizes with batch statistics (:class:`us3l.ops.USBatchNorm2d`), so a
fine-tuned detector holds statistics for no width. After training, :func:`calibrate_detector` re-estimates
them at each requested width from training images (train-mode forward of the parts that hold BN layers,
no gradients, equal-weight average over batches, summed over processes) and stores them in the BN layers;
they travel in the checkpoint's state dict (``running_mean`` for 1.0, ``running_mean_w0500`` for 0.5...).

THE RULE for a width without statistics, the same in Detectron2 and MMDetection: it is REFUSED, never
calibrated silently on demand. :func:`require_calibrated` raises :class:`us3l.UncalibratedWidthError`
naming the calibrated widths and the command that calibrates. Why: calibration needs training images and
minutes of compute, and its result depends on which images it saw; a test/deploy step that quietly did it
would give results that depend on hidden state. Calibration is always an explicit, logged step
(``tools/calibrate_detector.py``, or ``tools/eval_widths.py --calibrate-batches N``, which calls the same
function and stores the statistics in its output checkpoint).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn as nn

from ..bn_calibration import calibrate_bn, calibrated_widths
from ..ops import UncalibratedWidthError, USBatchNorm2d
from ..ops.norm import WIDTH_STATS_RE
from ..ops.width_state import canonical_width

CALIBRATE_HINT = ("calibrate it on training images first: python tools/calibrate_detector.py CHECKPOINT OUT "
                  "--config CFG --widths {w}  (or tools/eval_widths.py ... --calibrate-batches N)")


class _Chain(nn.Module):
    """Runs ``parts`` one after another (e.g. MMDetection ``backbone`` then ``neck``) for calibration."""

    def __init__(self, parts: Sequence[nn.Module]):
        super().__init__()
        self.parts = nn.ModuleList(parts)

    def forward(self, x):
        for p in self.parts:
            x = p(x)
        return x


def slimmable_bns(model: nn.Module) -> list[USBatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, USBatchNorm2d)]


def widths_to_calibrate(model: nn.Module, widths: Sequence[float], checkpoint: str, calibrate_batches: int) -> list:
    """The evaluation tools' rule: requested ``widths`` without BN statistics are calibrated when asked for
    (``calibrate_batches > 0``: returned, to be calibrated) and refused otherwise (UncalibratedWidthError)."""
    missing = [w for w in widths if w not in calibrated_widths(model)]
    if missing and calibrate_batches <= 0:
        raise UncalibratedWidthError(
            f"{checkpoint} has no BN statistics for widths {missing} "
            f"(calibrated: {calibrated_widths(model) or 'none'});"
            " pass --calibrate-batches N to calibrate them on training images first, or run "
            "tools/calibrate_detector.py")
    return missing


def prepare_widths(model: nn.Module, widths: Sequence[float], checkpoint: str, output_dir: str,
                   calibrate_batches: int, calibrate: Callable[[list], object],
                   save: Callable[[str, dict], None], log: Callable[[str], None]) -> list[float]:
    """The first step of the per-width evaluation of ONE slimmable detector, in either framework.

    ``widths`` are checked against the model's range (a bad width fails before anything is computed) and
    returned canonical; ``output_dir`` is made; the widths without BN statistics follow
    :func:`widths_to_calibrate`: refused, or calibrated with ``calibrate(missing)`` and the calibrated detector
    written with ``save(OUTPUT_DIR/model_calibrated.pth, {"source": checkpoint})``. ``log``: the framework's log.
    """
    from ..width import set_width

    widths = [set_width(model, w) for w in widths]  # range check first
    os.makedirs(output_dir, exist_ok=True)
    missing = widths_to_calibrate(model, widths, checkpoint, calibrate_batches)
    if missing:
        log(f"calibrating BN at widths {missing} on {calibrate_batches} training batches each")
        calibrate(missing)
        path = os.path.join(output_dir, "model_calibrated.pth")
        save(path, {"source": os.path.abspath(checkpoint)})
        log(f"wrote the calibrated checkpoint {path}")
    return widths


def require_calibrated(model: nn.Module, width: float) -> None:
    """Raise :class:`UncalibratedWidthError` unless every slimmable BN of ``model`` has statistics for ``width``."""
    if not slimmable_bns(model):
        return
    w = canonical_width(width)
    have = calibrated_widths(model)
    if w not in have:
        raise UncalibratedWidthError(
            f"this slimmable detector has no BN statistics for width {w} (calibrated widths: {have or 'none'}); "
            + CALIBRATE_HINT.format(w=w))


def reset_bn_statistics(model: nn.Module) -> int:
    """Forget every BN statistic (per-width ones removed, width 1.0 reset to mean 0 / var 1, counter 0).

    Statistics belong to the weights they were computed with: a pretrained backbone's statistics are stale
    once fine-tuning changes the weights, and would otherwise make width 1.0 look calibrated. Returns the
    number of BN layers reset.
    """
    bns = slimmable_bns(model)
    for bn in bns:
        for name in [n for n in bn._buffers if WIDTH_STATS_RE.match(n)]:
            del bn._buffers[name]
        bn.reset_running_stats()
    return len(bns)


@torch.no_grad()
def capped_calibration_batches(num_batches: int, num_images: int, batch_size: int, source: str, log=print) -> int:
    """``num_batches``, at most the batches of one pass over the training set: the loaders repeat forever, so a
    larger request would run for hours on the same images (one equal-weight average needs each image once).
    A capped request is said in one ``log`` line."""
    if num_batches <= 0:
        raise ValueError(f"--num-batches must be positive, got {num_batches}")
    available = -(-num_images // max(1, batch_size))
    if num_batches > available:
        log(f"--num-batches {num_batches} exceeds the {available} batches of one pass over {source} "
            f"({num_images} images, {batch_size} per batch): capped at {available} (more would only repeat images)")
        return available
    return num_batches


def calibrate_detector(model: nn.Module, parts: nn.Module | Sequence[nn.Module], images: Iterable[torch.Tensor],
                       widths: Sequence[float], num_batches: int | None = None, log=None) -> dict[float, int]:
    """Calibrate the BN statistics of ``model`` at each of ``widths``; returns ``{width: batches used}``.

    ``parts``: the module(s) that hold every slimmable BN of the detector, run in order on a batch of
    preprocessed images (Detectron2: ``model.backbone``; MMDetection: ``[model.backbone, model.neck]``).
    A slimmable BN outside them (e.g. a BN in a box head, which only sees sampled regions) is refused.
    ``images``: re-iterable batches of preprocessed image tensors ``[N, 3, H, W]`` (normalized, padded), on
    the model's device. The whole detector is set to each width while its parts are calibrated, and restored.
    ``log``: called with one progress line per calibrated width (a long calibration says where it is).
    """
    runner = parts if isinstance(parts, nn.Module) else _Chain(list(parts))
    inside = {id(m) for m in slimmable_bns(runner)}
    outside = [n for n, m in model.named_modules() if isinstance(m, USBatchNorm2d) and id(m) not in inside]
    if outside:
        raise ValueError(f"BN layers outside the calibrated parts cannot be calibrated from images: {outside[:5]}; "
                         "use no norm (or GroupNorm-free, BN-free) box/mask heads in a slimmable detector")
    if not inside:
        raise ValueError("the detector has no slimmable BN layers: nothing to calibrate")
    from ..width import width as width_ctx

    used = {}
    todo = sorted({canonical_width(w) for w in widths}, reverse=True)
    for i, w in enumerate(todo, 1):
        with width_ctx(model, w):
            used[w] = calibrate_bn(runner, images, w, num_batches, batch_to_input=lambda b: b)
        if log is not None:
            log(f"BN calibrated at width {w:g} on {used[w]} batches ({i} of {len(todo)} widths)")
    return used
