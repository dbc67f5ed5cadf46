"""Which training checkpoint a resume can continue from, in either framework.

A save cut short (a full disk, a kill before saves were atomic) leaves a file that does not read; a resume then
falls back to the newest intact checkpoint beside it instead of stopping, and says so.
"""
from __future__ import annotations

import glob
import os
import zipfile
from collections.abc import Callable, Iterable

from .io import read_framework_checkpoint
from .report import CheckpointError


def why_unreadable(path: str) -> str | None:
    """Why ``path`` cannot be resumed from (None: it reads). A torch zip file is checked by its CRCs, which a
    save cut short never completes; anything else goes through the safe loader."""
    if not os.path.isfile(path):
        return "missing"
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                return None if z.testzip() is None else "corrupt (a CRC does not match)"
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            return f"corrupt ({e})"
    try:
        read_framework_checkpoint(path)
    except CheckpointError:
        return "truncated or corrupt"
    return None


def newest_intact(folder: str, patterns: Iterable[str], order: Callable[[str], object],
                  skip: str = "") -> str | None:
    """The path of the newest (largest ``order(path)``) checkpoint matching ``patterns`` in ``folder`` that reads,
    other than ``skip``."""
    paths = {p for pattern in patterns for p in glob.glob(os.path.join(folder, pattern))}
    skip = os.path.abspath(skip) if skip else ""
    for path in sorted(paths, key=order, reverse=True):
        if os.path.abspath(path) != skip and why_unreadable(path) is None:
            return path
    return None
