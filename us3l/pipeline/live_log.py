"""Run a command with its output shown live AND saved to a log (the main job's stages, per-width evaluation)."""
from __future__ import annotations

import os
import subprocess
import sys


def tee_process(cmd: list, log, cwd: str, env: dict) -> int:
    """Copy the child's output to our stdout and to the open binary ``log``; returns its exit status.

    Chunks, not lines, so that progress bars (``\\r``) stay live.
    """
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    while True:
        chunk = os.read(proc.stdout.fileno(), 4096)
        if not chunk:
            break
        sys.stdout.buffer.write(chunk)
        sys.stdout.flush()
        log.write(chunk)
        log.flush()
    return proc.wait()
