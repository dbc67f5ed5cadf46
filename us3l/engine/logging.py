"""Run logging: console/file log, TensorBoard scalars, progress bar, and the collapse monitor.

Collapse (every input mapped to the same output) is the failure mode of naive slimmable SSL; it is visible
as the per-dimension std of L2-normalised outputs going to 0 (healthy outputs spread on the sphere have
``std ~ 1/sqrt(dim)``). The monitor logs ``std * sqrt(dim)`` per width and warns once it falls low.
"""
from __future__ import annotations

import logging
import math
import os
import sys

LOGGER_NAME = "us3l.pretrain"


def get_logger(output_dir: str | None = None, main: bool = True) -> logging.Logger:
    log = logging.getLogger(LOGGER_NAME)
    log.setLevel(logging.INFO if main else logging.WARNING)
    log.propagate = False
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    fmt = logging.Formatter("[%(asctime)s %(levelname)s] %(message)s", "%H:%M:%S")
    sh = logging.StreamHandler(sys.stderr)
    sh.setFormatter(fmt)
    log.addHandler(sh)
    if output_dir and main:
        fh = logging.FileHandler(os.path.join(output_dir, "log.txt"))
        fh.setFormatter(fmt)
        log.addHandler(fh)
    return log


class CollapseMonitor:
    """Tracks ``std * sqrt(dim)`` of normalised outputs per width; warns when it drops below ``threshold``."""

    def __init__(self, threshold: float, logger: logging.Logger):
        self.threshold, self.logger = threshold, logger
        self.last: dict[float, float] = {}
        self._warned: set[float] = set()

    def update(self, width: float, std: float, dim: int, iteration: int) -> float:
        score = std * math.sqrt(dim)
        self.last[width] = score
        key = round(width, 3)
        if score < self.threshold and key not in self._warned:
            self._warned.add(key)
            self.logger.warning(f"COLLAPSE WARNING at iteration {iteration}: width {width:.3f} output std*sqrt(d) = "
                                f"{score:.4f} (< {self.threshold}; ~1 is healthy, 0 = all inputs give one output)")
        elif score >= 2 * self.threshold:
            self._warned.discard(key)
        return score


class ScalarWriter:
    """TensorBoard scalars (main process only); a no-op when disabled."""

    def __init__(self, output_dir: str, enabled: bool):
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(os.path.join(output_dir, "tb"))

    def add(self, scalars: dict, step: int) -> None:
        if self.writer is not None:
            for k, v in scalars.items():
                self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
