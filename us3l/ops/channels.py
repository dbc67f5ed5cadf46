"""Channel rounding shared by every slimmable layer, so that adjacent layers agree on active channels."""
import functools


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` (at least ``min_value``), never below 90%."""
    if min_value is None:
        min_value = divisor
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


@functools.lru_cache(maxsize=8192)  # pure, and called by every layer on every forward
def active_channels(full: int, width: float, divisor: int = 8) -> int:
    """Channels a layer with ``full`` channels uses at ``width``; exactly ``full`` at width 1.0."""
    if width >= 1.0:
        return full
    return min(full, make_divisible(full * width, divisor))
