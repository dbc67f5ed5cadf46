"""Run a chain of command-line stages with visible, logged output and a resumable record of what finished.

Each stage is a subprocess (so it can be rerun, or run on a cluster, by itself with the printed command).
Finished stages are recorded in ``OUTPUT/stages.json`` with their command; a rerun skips a stage whose
command is unchanged and whose outputs exist, until the first stage that must run again: from there on every
stage reruns (its inputs may have changed). ``force`` reruns everything. Logs: ``OUTPUT/logs/<stage>.log``.
Independent chains (one detector per init and seed) may run side by side: :meth:`StageRunner.run_parallel`.
"""
from __future__ import annotations

import json
import os
import shlex
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Sequence

from .live_log import tee_process


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
        # the record entry of every stage of this invocation, run or skipped (see stage_meta)
        self.this_run: Dict[str, dict] = {}
        self.ran_any = False  # once a stage reruns, every later stage reruns too
        self._lock = threading.RLock()
        os.makedirs(os.path.join(out_dir, "logs"), exist_ok=True)

    def _save_record(self) -> None:
        with open(self.record_path + ".tmp", "w") as f:
            json.dump(self.record, f, indent=2)
        os.replace(self.record_path + ".tmp", self.record_path)

    def stage_meta(self, key: str) -> Dict[str, object]:
        """``key`` ("seconds", "cpu_seconds", "threads") of every stage of this invocation, by stage name."""
        return {name: rec.get(key) for name, rec in self.this_run.items()}

    def say(self, msg: str) -> None:
        m, s = divmod(int(time.time() - self.t0), 60)
        with self._lock:  # whole lines from parallel chains
            print(f"[{self.prefix} {m:02d}:{s:02d}] {msg}", flush=True)

    def run(self, name: str, cmd: List, outputs: List[str], index: str = "") -> None:
        """Run ``cmd`` as stage ``name`` unless it finished before with the same command and its outputs exist."""
        if self._run_one(name, cmd, outputs, index, may_skip=not self.ran_any, env=self.env, live=True):
            self.ran_any = True

    def run_parallel(self, chains: Sequence[Sequence], jobs: int, first_index: int, total: int,
                     lead: bool = False) -> None:
        """Run independent chains of stages (:class:`~us3l.pipeline.commands.Stage`), ``jobs`` at a time.

        Why: the detectors of a job are small and their time goes largely to per-operator overhead, so on a CPU
        two single-threaded runs side by side finish far sooner than two two-threaded runs one after the other.
        The cores are shared out (``OMP_NUM_THREADS`` = cores // jobs); a child's output goes to its log only
        (the console gets a line per start and finish, and the stage's ``report`` line if it has one, e.g. an
        evaluation's AP). Inside a chain the skip rule is the sequential one;
        a chain whose predecessor stages reran reruns in full. The first failure is raised once every chain
        has stopped.

        ``lead``: the first stage of the first chain runs alone on every core before the others start. Why: the
        first result comes sooner (the main job's first tiny detector training on 2 cores: 104 s alone on both,
        126-131 s for each of the later ones, one thread each, two side by side; ``results/main/results.json``,
        ``meta.stage_seconds``), at the price of a slightly longer whole job. A lead stage that fails is raised
        at once (no other chain has started).
        """
        cores = os.cpu_count() or 1
        threads = max(1, cores // max(1, jobs))
        env = dict(self.env, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        rerun_all = self.ran_any
        indices = iter(range(first_index, first_index + sum(len(c) for c in chains)))
        numbered = [[(st, f"[{next(indices)}/{total}]") for st in chain] for chain in chains]
        lead_ran = rerun_all  # whether the lead stage (before the rest of the first chain) ran

        def run_chain(i: int) -> bool:
            ran = lead_ran if i == 0 else rerun_all
            for st, index in numbered[i]:
                ran = self._run_stage(st, index, may_skip=not ran, env=env) or ran
            return ran

        if lead and jobs > 1 and threads < cores and numbered and numbered[0]:
            (st, index), numbered[0] = numbered[0][0], numbered[0][1:]
            self.say(f"{st.name} first, alone on {cores} threads (the first result sooner), then the rest")
            lead_env = dict(self.env, OMP_NUM_THREADS=str(cores), MKL_NUM_THREADS=str(cores))
            lead_ran = self._run_stage(st, index, may_skip=not rerun_all, env=lead_env) or rerun_all
        if jobs > 1:
            self.say(f"{len(chains)} independent runs, {jobs} at a time, {threads} thread(s) each")
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            futures = [pool.submit(run_chain, i) for i in range(len(numbered))]
        errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            raise errors[0]
        if any(f.result() for f in futures):
            self.ran_any = True

    def _run_stage(self, st, index: str, may_skip: bool, env: dict) -> bool:
        """A stage of a chain (output to its log only), then its ``report`` line, if it has one, once it ran."""
        ran = self._run_one(st.name, st.cmd, st.outputs, index, may_skip=may_skip, env=env, live=False)
        if ran and not self.dry_run and st.report is not None:
            self.say(f"{index} {st.name}: {st.report()}")
        return ran

    def _run_one(self, name: str, cmd: List, outputs: List[str], index: str, may_skip: bool, env: dict,
                 live: bool) -> bool:
        """One stage; returns whether it ran (False: skipped as done earlier)."""
        cmd = [str(c) for c in cmd]
        rec = self.record.get(name)
        if may_skip and rec and rec.get("cmd") == cmd and all(os.path.exists(o) for o in outputs):
            self.say(f"{index} {name}: done earlier, skipped (outputs exist; --force reruns)")
            self.this_run[name] = rec
            return False
        log_path = os.path.join(self.out_dir, "logs", f"{name}.log")
        self.say(f"{index} {name}: {shlex.join(cmd)}" + ("" if live else f"  (output: {log_path})"))
        if self.dry_run:
            return True
        with self._lock:
            if self.record.pop(name, None) is not None:  # an interrupted rerun must not pass for the old success
                self._save_record()
        start = time.time()
        with open(log_path, "wb") as log:
            log.write((shlex.join(cmd) + "\n").encode())
            rc, cpu = tee_process(cmd, log, self.cwd, env, live=live)
        seconds, cpu = round(time.time() - start, 1), round(cpu, 1)
        # OMP_NUM_THREADS (None: the tool's own default): the thread count picks the kernels and their summation
        # order, so it is part of what reproduces a number
        threads = int(env["OMP_NUM_THREADS"]) if env.get("OMP_NUM_THREADS", "").isdigit() else None
        if rc != 0:
            raise StageFailed(f"[{self.prefix}] stage {name!r} failed (exit {rc}); log: {log_path}\n"
                              f"rerun it alone with: {shlex.join(cmd)}")
        missing = [o for o in outputs if not os.path.exists(o)]
        if missing:
            raise StageFailed(f"[{self.prefix}] stage {name!r} finished but did not write {missing}; log: {log_path}")
        with self._lock:
            self.record[name] = self.this_run[name] = {"cmd": cmd, "outputs": outputs, "seconds": seconds,
                                                       "cpu_seconds": cpu, "threads": threads}
            self._save_record()
        self.say(f"{index} {name}: finished in {seconds:.0f}s ({cpu:.0f}s CPU)")
        return True
