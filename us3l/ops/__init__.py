"""Universally slimmable layers (prefix slicing, per-width BN statistics)."""
from .channels import active_channels, make_divisible
from .conv import USConv2d
from .linear import USLinear
from .norm import UncalibratedWidthError, USBatchNorm2d
from .width_state import DEFAULT_WIDTH_RANGE, SlimmableMixin, check_width, width_key

__all__ = ["active_channels", "make_divisible", "USConv2d", "USLinear", "USBatchNorm2d", "SlimmableMixin",
           "UncalibratedWidthError", "DEFAULT_WIDTH_RANGE", "check_width", "width_key"]
