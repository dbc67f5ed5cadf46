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
def active_channels(full: int, width: float, divisor: int = 8, ratio: int = 1) -> int:
    """Channels a layer with ``full`` channels uses at ``width``; exactly ``full`` at width 1.0.

    ``ratio`` > 1 (MobileNetV2's expanded channels, ``full = ratio * c``) rounds ``c`` and multiplies back, as
    the reference code does, so the count stays a multiple of the expansion ratio.
    """
    if width >= 1.0:
        return full
    if ratio != 1:
        return min(full, make_divisible(full * width / ratio, divisor) * ratio)
    return min(full, make_divisible(full * width, divisor))
