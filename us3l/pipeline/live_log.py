"""Run a command with its output shown live AND saved to a log (the main job's stages, per-width evaluation)."""
from __future__ import annotations

import os
import subprocess
import sys
from typing import Tuple


def tee_process(cmd: list, log, cwd: str, env: dict, live: bool = True) -> Tuple[int, float]:
    """Copy the child's output to the open binary ``log`` (and to our stdout if ``live``).

    Chunks, not lines, so that progress bars (``\\r``) stay live. Returns the exit status and the child's own
    CPU seconds (user + system, NaN where the OS cannot say): a load-independent measure of its cost that stays
    right when several children run at once.
    """
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    while True:
        chunk = os.read(proc.stdout.fileno(), 4096)
        if not chunk:
            break
        if live:
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
        log.write(chunk)
        log.flush()
    proc.stdout.close()
    if not hasattr(os, "wait4"):  # not on Windows
        return proc.wait(), float("nan")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_utime + usage.ru_stime
