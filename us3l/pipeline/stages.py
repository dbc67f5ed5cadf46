"""Run a chain of command-line stages with visible, logged output and a resumable record of what finished.

Each stage is a subprocess (so it can be rerun, or run on a cluster, by itself with the printed command).
Finished stages are recorded in ``OUTPUT/stages.json`` with their command; a rerun skips a stage whose
command is unchanged and whose outputs exist, until the first stage that must run again: from there on every
stage reruns (its inputs may have changed). ``force`` reruns everything. Logs: ``OUTPUT/logs/<stage>.log``.
"""
from __future__ import annotations

import json
import os
import shlex
import time
from typing import Dict, List, Optional

from .live_log import tee_process


def children_cpu_seconds() -> float:
    """CPU time (user + system) of finished child processes: a load-independent measure of a stage's cost."""
    try:
        import resource
    except ImportError:  # not on Windows
        return float("nan")
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class StageFailed(SystemExit):
    """A stage exited non-zero or did not write what it promised (message names the log and the command)."""


class StageRunner:
    """Runs stages in ``cwd`` with ``env``; remembers finished ones in ``out_dir/stages.json``."""

    def __init__(self, out_dir: str, cwd: str, env: dict, force: bool = False, dry_run: bool = False,
                 prefix: str = "us3l-main"):
        self.out_dir, self.cwd, self.env, self.force, self.dry_run = out_dir, cwd, env, force, dry_run
        self.prefix = prefix
        self.t0 = time.time()
        self.record_path = os.path.join(out_dir, "stages.json")
        self.record: Dict[str, dict] = {}
        if os.path.exists(self.record_path) and not force:
            with open(self.record_path) as f:
                self.record = json.load(f)
        self.timings: Dict[str, Optional[float]] = {}
        self.cpu: Dict[str, Optional[float]] = {}
        self.ran_any = False  # once a stage reruns, every later stage reruns too
        os.makedirs(os.path.join(out_dir, "logs"), exist_ok=True)

    def _save_record(self) -> None:
        with open(self.record_path + ".tmp", "w") as f:
            json.dump(self.record, f, indent=2)
        os.replace(self.record_path + ".tmp", self.record_path)

    def say(self, msg: str) -> None:
        m, s = divmod(int(time.time() - self.t0), 60)
        print(f"[{self.prefix} {m:02d}:{s:02d}] {msg}", flush=True)

    def run(self, name: str, cmd: List, outputs: List[str], index: str = "") -> None:
        """Run ``cmd`` as stage ``name`` unless it finished before with the same command and its outputs exist."""
        cmd = [str(c) for c in cmd]
        rec = self.record.get(name)
        if not self.ran_any and rec and rec.get("cmd") == cmd and all(os.path.exists(o) for o in outputs):
            self.say(f"{index} {name}: done earlier, skipped (outputs exist; --force reruns)")
            self.timings[name] = rec.get("seconds")
            self.cpu[name] = rec.get("cpu_seconds")
            return
        self.ran_any = True
        log_path = os.path.join(self.out_dir, "logs", f"{name}.log")
        self.say(f"{index} {name}: {shlex.join(cmd)}")
        if self.dry_run:
            return
        if self.record.pop(name, None) is not None:  # an interrupted rerun must not pass for the old success
            self._save_record()
        start, cpu0 = time.time(), children_cpu_seconds()
        with open(log_path, "wb") as log:
            log.write((shlex.join(cmd) + "\n").encode())
            rc = tee_process(cmd, log, self.cwd, self.env)
        seconds, cpu = round(time.time() - start, 1), round(children_cpu_seconds() - cpu0, 1)
        if rc != 0:
            raise StageFailed(f"[{self.prefix}] stage {name!r} failed (exit {rc}); log: {log_path}\n"
                              f"rerun it alone with: {shlex.join(cmd)}")
        missing = [o for o in outputs if not os.path.exists(o)]
        if missing:
            raise StageFailed(f"[{self.prefix}] stage {name!r} finished but did not write {missing}; log: {log_path}")
        self.timings[name] = seconds
        self.cpu[name] = cpu
        self.record[name] = {"cmd": cmd, "outputs": outputs, "seconds": seconds, "cpu_seconds": cpu}
        self._save_record()
        self.say(f"{index} {name}: finished in {seconds:.0f}s ({cpu:.0f}s CPU)")
