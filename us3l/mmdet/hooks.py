"""Hooks of US3L runs: per-width metrics (:class:`WidthMetricsHook`) and exact resume (:class:`RNGStateHook`).

Per-width metrics: every metric named by the detector's width and written as JSON in the work dir.

Why: results at several widths end up side by side; a name like ``w0.50/bbox_mAP`` (and one JSON file
per width) keeps them from being mixed up, and shows whether the width was applied at all.
"""
from __future__ import annotations

import json
import os
import time

from mmdet.registry import HOOKS
from mmengine.dist import is_main_process
from mmengine.hooks import Hook

from ..engine.checkpointing import rng_state, set_rng_state
from .width_config import check_width_consistency, detector_width, width_tag


def _plain(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


@HOOKS.register_module()
class WidthMetricsHook(Hook):
    """Prefixes evaluator metrics with ``w<width>`` and appends them to ``<work_dir>/metrics_w<width>.json``."""

    priority = "VERY_HIGH"

    def __init__(self, filename: str = "metrics_{tag}.json"):
        self.filename = filename
        self.tag = None

    def before_run(self, runner) -> None:
        model = getattr(runner.model, "module", runner.model)
        check_width_consistency(model)
        width = detector_width(model)
        if width is None:
            return
        self.width, self.tag = width, width_tag(width)
        for attr in ("_val_loop", "_test_loop"):
            evaluator = getattr(getattr(runner, attr, None), "evaluator", None)
            for metric in getattr(evaluator, "metrics", []):
                metric.prefix = self.tag

    def _dump(self, runner, mode: str, metrics) -> None:
        if self.tag is None or not metrics or not is_main_process():
            return
        path = os.path.join(runner.work_dir, self.filename.format(tag=self.tag))
        records = []
        if os.path.isfile(path):
            with open(path) as f:
                records = json.load(f)
        records.append({"mode": mode, "width": self.width, "epoch": runner.epoch, "iter": runner.iter,
                        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                        "metrics": {k: _plain(v) for k, v in metrics.items()}})
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(records, f, indent=1)
        os.replace(tmp, path)

    def after_val_epoch(self, runner, metrics=None) -> None:
        self._dump(runner, "val", metrics)

    def after_test_epoch(self, runner, metrics=None) -> None:
        self._dump(runner, "test", metrics)


@HOOKS.register_module()
class RNGStateHook(Hook):
    """Saves the Python, NumPy and torch RNG states in every checkpoint and restores them on resume.

    mmengine seeds once at start-up and saves none of them, so a resumed run draws other random flips, RoI samples
    and anchor samples than the uninterrupted run did after the same iteration (its data order is already a
    function of seed and epoch, the sandwich widths of seed and iteration). With this hook ``--resume`` continues
    exactly; with :class:`us3l.mmdet.loops.US3LEpochBasedTrainLoop` also from the middle of an epoch (the states
    at the epoch's start are saved too). Plain tensors and tuples only: the checkpoint still reads weights-only.
    """

    priority = "VERY_LOW"  # after the checkpoint hook has collected everything else

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        states = {"current": rng_state()}
        epoch_start = getattr(runner.train_loop, "epoch_start_rng", None)
        if epoch_start is not None:
            states["epoch_start"] = epoch_start
        checkpoint.setdefault("meta", {})["rng_states"] = states

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        states = (checkpoint.get("meta") or {}).get("rng_states")
        if not states or not runner._resume:  # a checkpoint loaded as weights (load_from) keeps this run's seeds
            return
        if "current" not in states:  # a checkpoint of an older us3l (one flat set of states): not restored
            runner.logger.warning("--resume: this checkpoint's RNG states are in an older layout and are not "
                                  "restored; augmentation and sampling after the resume differ from the "
                                  "uninterrupted run")
            return
        set_rng_state(states["current"])
        if hasattr(runner.train_loop, "resume_rng"):
            runner.train_loop.resume_rng = states
