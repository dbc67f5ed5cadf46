"""``US3LTrainer``: Detectron2's ``DefaultTrainer`` with five changes.

The checkpointer is :class:`US3LCheckpointer` (never a silently skipped tensor), ``--resume`` continues exactly
(optimizer state in the checkpoint, data and randomness a function of seed and iteration: :mod:`.resumable`),
the evaluator is pycocotools COCO evaluation (``TEST.IMS_PER_BATCH`` images per batch), results are keyed by
the width, and short runs log more often (:func:`log_period`). A user's own training script uses it in place
of ``DefaultTrainer``; the command line around it is :mod:`us3l.d2.engine`.
"""
from __future__ import annotations

import logging
import weakref
from collections import OrderedDict

from detectron2.engine import DefaultTrainer, hooks

from ..errors import BAD_INPUT_ERRORS
from .checkpoint import US3LCheckpointer
from .config import us3l_width
from .evaluation import build_coco_evaluator, build_test_loader, key_by_width, save_width_metrics
from .resumable import IterationSeed, build_resumable_train_loader, is_resumable, restart
from .resumable import logger as resume_log


def log_period(max_iter: int) -> int:
    """Iterations between log lines (loss, ETA) and metrics.json rows: Detectron2's 20, or about 20 lines in a
    shorter run (a 100-iteration CPU run would otherwise print nothing for its first minute or two)."""
    return max(1, min(20, max_iter // 20))


class US3LTrainer(DefaultTrainer):
    """``DefaultTrainer`` with the US3L checkpointer, exact resume and per-width COCO evaluation."""

    checkpointer_class = US3LCheckpointer  # the one place a trainer's loader is chosen (training and --eval-only)

    def build_hooks(self):
        # DefaultTrainer.__init__ creates its checkpointer just before building hooks: swap it in here so the
        # periodic checkpointer and resume_or_load both use ours.
        self.checkpointer = self.checkpointer_class(self._trainer.model, self.cfg.OUTPUT_DIR, cfg=self.cfg,
                                                    trainer=weakref.proxy(self))
        ret = super().build_hooks()
        for h in ret:
            if isinstance(h, hooks.PeriodicWriter):  # Detectron2 writes every 20 iterations, whatever the run's length
                h._period = log_period(self.max_iter)
        return [IterationSeed(lambda: self.data_seed), *ret]

    def train(self):
        # Detectron2 logs the traceback of any exception in the loop before re-raising it; bad input (a corrupt
        # image, ...) becomes one error line at exit instead (us3l.cli), so its traceback is not logged
        loop_log = logging.getLogger("detectron2.engine.train_loop")
        quiet = _QuietBadInput()
        loop_log.addFilter(quiet)
        try:
            return super().train()
        finally:
            loop_log.removeFilter(quiet)

    @classmethod
    def build_train_loader(cls, cfg):
        if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
            resume_log.warning(
                "DATALOADER.SAMPLER_TRAIN %s: Detectron2's own loader is used, and --resume does not replay its "
                "data order (only TrainingSampler is resumable here)", cfg.DATALOADER.SAMPLER_TRAIN)
            return super().build_train_loader(cfg)
        return build_resumable_train_loader(cfg)

    @property
    def data_seed(self) -> int:
        """The seed of the data stream and of every step's randomness (``SEED``, or the one drawn for ``SEED`` -1,
        which the checkpoint keeps)."""
        loader = self._trainer.data_loader
        return loader.batch_sampler.seed if is_resumable(loader) else max(int(self.cfg.SEED), 0)

    def state_dict(self):
        # Detectron2 0.6 saves the iteration and hook states only: the optimizer (momentum) and the data seed
        # are what an exact resume needs besides
        ret = super().state_dict()
        ret["_trainer"] = self._trainer.state_dict()
        ret["data_seed"] = self.data_seed
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])
        else:
            resume_log.warning(
                "the checkpoint holds no optimizer state (written by Detectron2's own trainer or an older us3l): "
                "momentum restarts from zero, so this resume is not exact")
        loader = self._trainer.data_loader
        if is_resumable(loader):  # the data stream continues at the next iteration's batch, as if never interrupted
            seed = state_dict.get("data_seed", self.data_seed)
            _set_loader_iterator(self._trainer, restart(loader, state_dict["iteration"] + 1, seed))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_coco_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        results = super().test(cfg, model, evaluators)
        if len(cfg.DATASETS.TEST) == 1:
            results = {cfg.DATASETS.TEST[0]: results}
        width = us3l_width(cfg)
        keyed = OrderedDict()
        for name, res in results.items():
            if res:
                save_width_metrics(cfg, name, res)
            keyed[name] = key_by_width(width, res or {})
        return keyed[cfg.DATASETS.TEST[0]] if len(keyed) == 1 else keyed


class _QuietBadInput(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], BAD_INPUT_ERRORS))


def _set_loader_iterator(trainer, it) -> None:
    """Replace a ``SimpleTrainer``'s data iterator (an attribute in Detectron2 0.6, a lazy property later)."""
    if isinstance(getattr(type(trainer), "_data_loader_iter", None), property):
        trainer._data_loader_iter_obj = it
    else:
        trainer._data_loader_iter = it


__all__ = ["US3LTrainer", "log_period"]
