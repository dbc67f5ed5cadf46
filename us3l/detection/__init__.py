"""Universally slimmable detectors, framework-agnostic core (imports only torch).

One detector (backbone, FPN, RPN head, ROI box/mask heads) runs at any width; the width logic is written
here once and used by the thin Detectron2 (``us3l.d2.slimmable_*`` / ``us3l.d2.sandwich``) and MMDetection
(``us3l.mmdet``) glue:

* :mod:`.layers`: slimmable conv / deconv / linear / BN and :func:`slimmify`, which converts a framework's
  own neck/head IN PLACE keeping parameter names (so export is prefix slicing);
* :mod:`.sandwich`: width sampling (max, min, n random; a pure function of seed and iteration) and
  :func:`sandwich_step` (per-width losses, accumulated gradients, DDP ``no_sync``, AMP-ready backward);
* :mod:`.distill`: inplace distillation losses (RPN objectness, box classification);
* :mod:`.calibration`: per-width BN calibration of a whole detector and THE rule for an uncalibrated width
  (refused with :class:`us3l.UncalibratedWidthError`, never calibrated silently);
* :mod:`.export_rules`: channel counts of each component at a width (what export configs are written from);
* :mod:`.flops`: whole-detector GFLOPs per width via fvcore.
"""
from .calibration import CALIBRATE_HINT, calibrate_detector, require_calibrated, reset_bn_statistics, slimmable_bns
from .distill import box_cls_distill_loss, objectness_distill_loss
from .export_rules import backbone_stage_channels, neck_head_channels
from .flops import fvcore_total_gflops, gflops_per_width
from .layers import (
                     SlimmableConv2d,
                     SlimmableFlattenLinear,
                     USConvTranspose2d,
                     slimmable_conv,
                     slimmable_conv_transpose,
                     slimmable_linear,
                     slimmable_norm,
                     slimmify,
)
from .sandwich import SandwichConfig, resolve_seed, sample_widths, sandwich_step, width_tags

__all__ = ["CALIBRATE_HINT", "calibrate_detector", "require_calibrated", "reset_bn_statistics", "slimmable_bns",
           "box_cls_distill_loss", "objectness_distill_loss", "backbone_stage_channels", "neck_head_channels",
           "fvcore_total_gflops", "gflops_per_width", "SlimmableConv2d", "SlimmableFlattenLinear",
           "USConvTranspose2d", "slimmable_conv", "slimmable_conv_transpose", "slimmable_linear", "slimmable_norm",
           "slimmify", "SandwichConfig", "resolve_seed", "sample_widths", "sandwich_step", "width_tags"]
