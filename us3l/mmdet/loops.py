"""``US3LEpochBasedTrainLoop``: mmengine's epoch loop that resumes in the middle of an epoch exactly.

mmengine restores the iteration counter from an iteration checkpoint (``CheckpointHook(by_epoch=False)``) but
starts the epoch again from its first batch: the resumed run trains on batches the uninterrupted run had already
seen, then more iterations than it would have. Here the loop remembers the RNG states at the start of every epoch
(saved in each checkpoint by :class:`us3l.mmdet.RNGStateHook`); a resume in mid-epoch restores them, creates the
data iterator as the uninterrupted run did, replays the batches already trained on by loading them (so workers,
samplers and transforms are where they were), then restores the RNG states of the checkpoint and continues
with the next batch.

Exact with ``num_workers=0`` or non-persistent workers; persistent workers carry their RNG streams over
epochs, which no checkpoint holds (a warning says so when that matters).
"""
from __future__ import annotations

from mmdet.registry import LOOPS
from mmengine.logging import print_log
from mmengine.runner import EpochBasedTrainLoop

from ..engine.checkpointing import rng_state, set_rng_state


@LOOPS.register_module()
class US3LEpochBasedTrainLoop(EpochBasedTrainLoop):
    """``EpochBasedTrainLoop`` (same arguments) that continues a resumed epoch at the batch it stopped after."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.epoch_start_rng: dict | None = None  # saved in checkpoints by RNGStateHook
        self.resume_rng: dict | None = None  # set by RNGStateHook on --resume: {"epoch_start", "current"}

    def run_epoch(self) -> None:
        done = self._iter - self._epoch * len(self.dataloader)
        resume, self.resume_rng = self.resume_rng, None
        if done > 0 and resume and resume.get("epoch_start"):
            set_rng_state(resume["epoch_start"])
        elif done > 0:
            print_log(f"resuming in epoch {self._epoch + 1} after batch {done}: the checkpoint has no RNG states "
                      "of the epoch's start, so the remaining batches are the same but their random augmentation "
                      "is not", logger="current", level=30)
        self.epoch_start_rng = rng_state()
        self.runner.call_hook("before_train_epoch")
        self.runner.model.train()
        batches = iter(self.dataloader)
        if done > 0:
            if self._epoch > 0 and getattr(self.dataloader, "persistent_workers", False):
                print_log("resuming with persistent data workers: their RNG streams from earlier epochs are not "
                          "in the checkpoint, so augmentation differs from the uninterrupted run (set "
                          "train_dataloader.persistent_workers=False for an exact resume)", logger="current",
                          level=30)
            for _ in range(done):
                next(batches)
            if resume and resume.get("current"):
                set_rng_state(resume["current"])
            print_log(f"resumed in epoch {self._epoch + 1}: {done} of {len(self.dataloader)} batches replayed "
                      "(loaded, not trained on)", logger="current")
        for idx, data_batch in enumerate(batches, start=done):
            self.run_iter(idx, data_batch)
        self.runner.call_hook("after_train_epoch")
        self._epoch += 1
