"""Self-supervised pre-training of universally slimmable networks: US3L and the Table-1 baselines."""
from .ema import ema_update, make_teacher, momentum_at
from .group_reg import GroupRegularizer, alpha_at
from .init_from import InitReport, init_from_checkpoint
from .methods import BASE_LOSSES, METHODS, HeadSpec, OnlineNet, SSLMethod, build_method, resolve_heads
from .width_sampling import WidthSampler, dynamic_min_width, sandwich_widths

__all__ = ["ema_update", "make_teacher", "momentum_at", "GroupRegularizer", "alpha_at", "BASE_LOSSES", "METHODS",
           "HeadSpec", "OnlineNet", "SSLMethod", "build_method", "resolve_heads", "InitReport", "init_from_checkpoint",
           "WidthSampler", "dynamic_min_width", "sandwich_widths"]
