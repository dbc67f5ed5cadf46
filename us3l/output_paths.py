"""Output paths checked before a tool reads its inputs or does any work, without creating anything.

Why: a tool used to find out that it cannot write its output only when it wrote it, after minutes of work, with a
traceback (``os.makedirs`` under a path whose parent is a file), or after it had already left a log, a config or
TensorBoard files behind. Every command line calls :func:`check_output_file` / :func:`check_output_dir` on each
path it will write right after parsing its arguments; a refusal is an :class:`~us3l.errors.OutputPathError`, which
the tools print as one ``error:`` line with exit code 2 (:mod:`us3l.cli`). Only ``os.path`` / ``os.access``
queries: nothing is created, so a refused run leaves the disk as it was.
"""
from __future__ import annotations

import os
from collections.abc import Iterable

from .errors import OutputPathError


def _nearest_existing(path: str) -> str:
    """``path`` itself or its closest ancestor that exists (a file there means the path cannot be made)."""
    while not os.path.lexists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def _same(a: str, b: str) -> bool:
    if os.path.abspath(a) == os.path.abspath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def _check_can_create(path: str, what: str, given: str) -> None:
    """The folders above ``path`` exist or can be made: the closest existing one is a writable folder."""
    ancestor = _nearest_existing(os.path.dirname(path))
    if not os.path.isdir(ancestor):
        raise OutputPathError(f"{what} {given}: {ancestor} is a file, not a folder; choose another path or move "
                              "that file away")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputPathError(f"{what} {given}: the folder {ancestor} is not writable; choose a path in a folder "
                              "you can write to")


def _check_not_input(path: str, what: str, given: str, inputs: Iterable) -> None:
    for src in inputs:
        if src and _same(path, os.fspath(src)):
            raise OutputPathError(f"{what} {given} would overwrite the input {os.fspath(src)}; give the output "
                                  "another name")


def check_output_file(path, what: str = "output", inputs: Iterable = ()) -> str:
    """Refuse a FILE output that cannot be written (see the module docstring); returns its absolute path.

    ``what`` names the argument in the message (``DST``, ``--output``); ``inputs``: paths the output must not be."""
    given = os.fspath(path) if path is not None else ""
    if not given:
        raise OutputPathError(f"{what}: an empty path; give a file name")
    full = os.path.abspath(given)
    if os.path.isdir(full):
        raise OutputPathError(f"{what} {given} is a folder; give the path of a file to write (e.g. inside it)")
    if os.path.lexists(full) and not os.access(full, os.W_OK):
        raise OutputPathError(f"{what} {given} exists and is not writable; choose another path")
    _check_can_create(full, what, given)
    _check_not_input(full, what, given, inputs)
    return full


def check_output_dir(path, what: str = "output folder", inputs: Iterable = ()) -> str:
    """Refuse an output FOLDER that cannot be made or written (an existing folder is fine); returns its absolute
    path."""
    given = os.fspath(path) if path is not None else ""
    if not given:
        raise OutputPathError(f"{what}: an empty path; give a folder name")
    full = os.path.abspath(given)
    if os.path.lexists(full) and not os.path.isdir(full):
        raise OutputPathError(f"{what} {given} is a file, not a folder; choose another path or move that file away")
    if os.path.isdir(full):
        if not os.access(full, os.W_OK | os.X_OK):
            raise OutputPathError(f"{what} {given} is not writable; choose a folder you can write to")
    else:
        _check_can_create(full, what, given)
    _check_not_input(full, what, given, inputs)
    return full


__all__ = ["OutputPathError", "check_output_file", "check_output_dir"]
