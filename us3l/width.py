"""The one place where the runtime width of a slimmable model is read and written."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch.nn as nn

from .ops.width_state import SlimmableMixin, check_width


def slimmable_modules(model: nn.Module) -> list[SlimmableMixin]:
    return [m for m in model.modules() if isinstance(m, SlimmableMixin)]


def width_range(model: nn.Module) -> tuple[float, float]:
    """The widths every slimmable layer of ``model`` accepts (intersection of their ranges)."""
    mods = _require_slimmable(model)
    return max(m.width_range[0] for m in mods), min(m.width_range[1] for m in mods)


def set_width(model: nn.Module, width: float) -> float:
    """Set the active width of every slimmable layer; returns the canonical width (3 decimals).

    Raises ``ValueError`` (and changes nothing) when the width is outside the model's range.
    """
    mods = _require_slimmable(model)
    w = check_width(width, width_range(model))
    for m in mods:
        m.width_mult = w
    return w


def get_width(model: nn.Module) -> float:
    mods = _require_slimmable(model)
    widths = {m.width_mult for m in mods}
    if len(widths) != 1:
        raise RuntimeError(f"slimmable layers disagree on the width: {sorted(widths)}; use us3l.set_width")
    return widths.pop()


@contextlib.contextmanager
def width(model: nn.Module, w: float) -> Iterator[float]:
    """Run a block at width ``w`` and restore the previous width afterwards."""
    previous = get_width(model)
    try:
        yield set_width(model, w)
    finally:
        set_width(model, previous)


def _require_slimmable(model: nn.Module) -> list[SlimmableMixin]:
    mods = slimmable_modules(model)
    if not mods:
        raise ValueError(f"{type(model).__name__} has no slimmable layers: its width cannot be set "
                         "(build it with us3l.models, e.g. us3l.models.us_resnet50())")
    return mods


def width_text(width: float) -> str:
    """A width as names and tables write it: ``0.50``, ``1.00``, ``0.375`` (two decimals, three when needed)."""
    text = f"{float(width):.3f}".rstrip("0")
    whole, frac = text.split(".")
    return f"{whole}.{frac.ljust(2, '0')}"


def width_tag(width: float) -> str:
    """Folder / metric name of a width: ``w0.50``, ``w1.00``, ``w0.375`` (``w`` + :func:`width_text`).

    The one naming rule for widths in file names and metric keys, so that 0.35 and 0.375 never collide.
    """
    return f"w{width_text(width)}"
