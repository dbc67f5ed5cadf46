"""Runtime width state common to every slimmable op: the active width and the range it may take."""
from __future__ import annotations

DEFAULT_WIDTH_RANGE = (0.25, 1.0)


def width_key(width: float) -> str:
    """Canonical 4-digit key of a width (resolution 0.001), used to name per-width BN statistics."""
    return f"{round(float(width) * 1000):04d}"


def canonical_width(width: float) -> float:
    """Widths are stored to 3 decimals so that a width and its BN-statistics key agree."""
    return round(float(width), 3)


def check_width(width: float, width_range: tuple[float, float]) -> float:
    lo, hi = width_range
    try:
        w = float(width)
    except (TypeError, ValueError):
        raise ValueError(f"width must be a number in [{lo}, {hi}], got {width!r}") from None
    if not (w == w) or w < lo - 1e-9 or w > hi + 1e-9:
        raise ValueError(f"width {w} is outside this model's width range [{lo}, {hi}]")
    return canonical_width(w)


def check_width_range(width_range) -> tuple[float, float]:
    lo, hi = (float(v) for v in width_range)
    if not (0.0 < lo <= hi <= 1.0):
        raise ValueError(f"width range must satisfy 0 < w_min <= w_max <= 1, got [{lo}, {hi}]")
    return lo, hi


class SlimmableMixin:
    """Marks a module as slimmable. ``width_mult`` is set only through :func:`us3l.set_width`."""

    width_mult: float = 1.0
    width_range: tuple[float, float] = DEFAULT_WIDTH_RANGE

    def _init_width(self, width_range=DEFAULT_WIDTH_RANGE) -> None:
        self.width_range = check_width_range(width_range)
        self.width_mult = 1.0

    # -- grad-free forwards reuse per-width tensors (us3l.ops.weight_slice); these events drop them ------------
    def _clear_inference_cache(self) -> None:
        """Layers that keep per-width tensors for grad-free forwards release them here."""

    def train(self, mode: bool = True):
        self._clear_inference_cache()
        return super().train(mode)

    def _apply(self, *args, **kwargs):
        self._clear_inference_cache()
        return super()._apply(*args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        self._clear_inference_cache()
        return super()._load_from_state_dict(*args, **kwargs)
