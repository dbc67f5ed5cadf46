"""Exact resume of Detectron2 training: every iteration's data and randomness are a function of (seed, rank,
iteration), never of the history of the process.

Detectron2 0.6 resumes the iteration and the LR scheduler only: its ``DefaultTrainer.state_dict`` leaves out the
optimizer (momentum restarts at zero), its ``TrainingSampler`` restarts the shuffled stream at the first image,
and augmentations and RoI sampling draw from process-global RNGs whose state is lost with the process. Here:

- :class:`ResumableBatchSampler` yields per-rank batches of dataset indices (shuffled epochs, aspect-ratio
  grouped like Detectron2's) from the seed alone, and starts at any batch number by replaying indices, which
  costs no image loading;
- :class:`SeededDataset` maps each image with the Python / NumPy / torch RNGs seeded from (seed, batch, slot),
  so augmentations do not depend on what ran before, in the main process or in any worker;
- :class:`IterationSeed` seeds the global RNGs before every step from (seed, rank, iteration), so what the
  model draws (RPN / RoI sampling) replays after a restart;
- the trainer's state (``us3l.d2.trainer.US3LTrainer``) carries the optimizer and the data seed.
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import random
from collections import defaultdict
from typing import Iterator, List, Sequence

import numpy as np
import torch
from detectron2.engine import HookBase
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng

from ..errors import DatasetFormatError

logger = logging.getLogger("detectron2.us3l.resume")


def mixed_seed(*parts) -> int:
    """A 31-bit seed from any tuple of ints / strings (stable across processes and Python runs)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little") & 0x7FFFFFFF


@contextlib.contextmanager
def seeded_rngs(seed: int):
    """The Python, NumPy and torch (CPU) RNGs seeded with ``seed`` inside, restored after."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    seed_all_rng(seed)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


class ResumableBatchSampler(torch.utils.data.Sampler):
    """Infinite per-rank batches of ``(index, batch number, slot)`` from ``seed``, starting at batch ``start``.

    The index stream is Detectron2's ``TrainingSampler`` stream (one ``randperm`` per epoch from one generator,
    every ``world_size``-th index for this rank); indices are grouped into batches by ``groups[index]`` (aspect
    ratio bucket, as ``AspectRatioGroupedDataset`` does, but before loading), so batch ``k`` depends on the seed
    only, and skipping to it replays integers, not images.
    """

    def __init__(self, groups: Sequence[int], batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, start: int = 0):
        if batch_size < 1 or not len(groups):
            raise ValueError(f"need a non-empty dataset and batch_size >= 1 (got {len(groups)}, {batch_size})")
        self.groups, self.batch_size, self.seed = list(groups), int(batch_size), int(seed)
        self.rank, self.world_size, self.shuffle, self.start = int(rank), int(world_size), shuffle, int(start)

    def _indices(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self.seed)
        n = len(self.groups)
        stream = itertools.chain.from_iterable(
            torch.randperm(n, generator=g).tolist() if self.shuffle else range(n) for _ in itertools.count())
        return itertools.islice(stream, self.rank, None, self.world_size)

    def __iter__(self) -> Iterator[List[tuple]]:
        buckets, number = defaultdict(list), 0
        for idx in self._indices():
            bucket = buckets[self.groups[idx]]
            bucket.append(idx)
            if len(bucket) == self.batch_size:
                if number >= self.start:
                    yield [(i, number, slot) for slot, i in enumerate(bucket)]
                number += 1
                bucket.clear()


class SeededDataset(torch.utils.data.Dataset):
    """``mapper(dataset[index])`` with every RNG seeded from (seed, batch number, slot).

    Like Detectron2's ``MapDataset``, an image the mapper drops (``None``) is replaced by another one, here
    drawn from the same seeded RNG, so the replacement replays too.
    """

    def __init__(self, dataset, mapper, seed: int):
        self.dataset, self.mapper, self.seed = dataset, mapper, int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        idx, number, slot = key
        with seeded_rngs(mixed_seed(self.seed, "sample", number, slot)):
            for _ in range(100):
                record = self.dataset[idx]
                try:
                    out = self.mapper(record)
                except OSError as e:  # PIL's UnidentifiedImageError, a truncated file: name the file
                    raise DatasetFormatError(f"training image {record.get('file_name', idx)} cannot be read "
                                             f"({type(e).__name__}: {e})") from e
                if out is not None:
                    return out
                idx = random.randrange(len(self.dataset))
        raise RuntimeError(f"the dataset mapper returned no image for 100 draws (last index {idx})")


def _trivial_collate(batch):
    return batch


def build_resumable_train_loader(cfg, mapper=None):
    """Detectron2's training loader, made resumable (see the module docstring): same dataset dicts, mapper,
    per-rank batch size, aspect-ratio grouping and worker count; ``TrainingSampler`` only."""
    from detectron2.data import DatasetFromList, DatasetMapper, get_detection_dataset_dicts

    dicts = get_detection_dataset_dicts(
        cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
        min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0,
        proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None)
    world = comm.get_world_size()
    if cfg.SOLVER.IMS_PER_BATCH % world:
        raise ValueError(f"SOLVER.IMS_PER_BATCH ({cfg.SOLVER.IMS_PER_BATCH}) must divide by the number of "
                         f"processes ({world})")
    group = cfg.DATALOADER.ASPECT_RATIO_GROUPING
    groups = [(0 if d["width"] > d["height"] else 1) if group else 0 for d in dicts]
    seed = cfg.SEED
    if seed < 0:  # Detectron2's "a random seed": drawn once, shared by the ranks, kept in the checkpoint
        seed = comm.shared_random_seed()
    sampler = ResumableBatchSampler(groups, cfg.SOLVER.IMS_PER_BATCH // world, seed, comm.get_rank(), world)
    dataset = SeededDataset(DatasetFromList(dicts, copy=False), mapper or DatasetMapper(cfg, True), seed)
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.DATALOADER.NUM_WORKERS,
                                       collate_fn=_trivial_collate)


def is_resumable(loader) -> bool:
    return isinstance(getattr(loader, "batch_sampler", None), ResumableBatchSampler)


def restart(loader, start: int, seed: int):
    """A new iterator over a resumable ``loader`` from batch ``start`` of the stream of ``seed``."""
    loader.batch_sampler.start, loader.batch_sampler.seed, loader.dataset.seed = int(start), int(seed), int(seed)
    return iter(loader)


class IterationSeed(HookBase):
    """Before every step: the global Python / NumPy / torch RNGs seeded from (seed, rank, iteration)."""

    def __init__(self, seed_of_run):
        self._seed = seed_of_run  # a callable: the trainer's seed can change when a checkpoint is resumed

    def before_step(self):
        seed_all_rng(mixed_seed(self._seed(), "step", comm.get_rank(), self.trainer.iter))  # every device's too
