"""us3l: universally slimmable self-supervised backbones (US3L, CVPR 2023) for detection at any width.

Imports only torch/torchvision; Detectron2 and MMDetection glue lives in ``us3l.d2`` / ``us3l.mmdet``.
"""
from .bn_calibration import calibrate_bn, calibrated_widths
from .export import export_static
from .ops import UncalibratedWidthError, active_channels, make_divisible
from .width import get_width, set_width, width, width_range

__version__ = "0.1.0"

__all__ = ["calibrate_bn", "calibrated_widths", "export_static", "get_width", "set_width", "width", "width_range",
           "make_divisible", "active_channels", "UncalibratedWidthError", "__version__"]
