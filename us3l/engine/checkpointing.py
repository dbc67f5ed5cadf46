"""Training checkpoints (``us3l.pretrain/1``): atomic, keep-last-N, and complete enough for EXACT resume.

A checkpoint holds only tensors and plain Python values (RNG states included), so it loads with
``torch.load(weights_only=True)``. ``model`` is the online network (backbone under ``backbone.``), which
``us3l.checkpoint.load_backbone`` reads directly.
"""
from __future__ import annotations

import glob
import os
import random
import re

import numpy as np
import torch

from ..checkpoint import PRETRAIN_FORMAT, atomic_save, read_checkpoint
from ..checkpoint.report import CheckpointError

PERIODIC_RE = re.compile(r"^ckpt_(\d{8})\.pth$")


def rng_state() -> dict:
    """Every global RNG the process uses, as tensors / plain values."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": _to_plain(random.getstate()),
             "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                       "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached": float(np_state[4])}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_to_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_plain(x):
    return [_to_plain(v) for v in x] if isinstance(x, tuple) else x


def _to_tuple(x):
    return tuple(_to_tuple(v) for v in x) if isinstance(x, list) else x


def periodic_name(iteration: int) -> str:
    return f"ckpt_{iteration:08d}.pth"


def save_checkpoint(state: dict, output_dir: str, iteration: int, keep_last: int, periodic: bool,
                    final: bool = False) -> list[str]:
    """Write ``last.pth`` (and a periodic / final copy); prune periodic copies beyond ``keep_last``."""
    state = dict(state, format=PRETRAIN_FORMAT)
    written = []
    if periodic:
        path = os.path.join(output_dir, periodic_name(iteration))
        atomic_save(state, path)
        written.append(path)
        if keep_last > 0:
            old = sorted(p for p in glob.glob(os.path.join(output_dir, "ckpt_*.pth"))
                         if PERIODIC_RE.match(os.path.basename(p)))
            for p in old[:-keep_last]:
                os.remove(p)
    atomic_save(state, os.path.join(output_dir, "last.pth"))
    written.append(os.path.join(output_dir, "last.pth"))
    if final:
        atomic_save(state, os.path.join(output_dir, "final.pth"))
        written.append(os.path.join(output_dir, "final.pth"))
    return written


def load_training_checkpoint(path: str) -> dict:
    ckpt = read_checkpoint(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != PRETRAIN_FORMAT:
        raise CheckpointError(f"{path} is not a us3l pre-training checkpoint (format {PRETRAIN_FORMAT})")
    for key in ("model", "optimizer", "progress", "meta"):
        if key not in ckpt:
            raise CheckpointError(f"{path} lacks {key!r}: it cannot resume training")
    return ckpt
