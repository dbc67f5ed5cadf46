"""Self-supervised pre-training of universally slimmable networks: US3L and the Table-1 baselines."""
from .ema import ema_update, make_teacher, momentum_at
from .group_reg import GroupRegularizer, alpha_at
from .methods import BASE_LOSSES, METHODS, OnlineNet, SSLMethod, build_method
from .width_sampling import WidthSampler, dynamic_min_width, sandwich_widths

__all__ = ["ema_update", "make_teacher", "momentum_at", "GroupRegularizer", "alpha_at", "BASE_LOSSES", "METHODS",
           "OnlineNet", "SSLMethod", "build_method", "WidthSampler", "dynamic_min_width", "sandwich_widths"]
