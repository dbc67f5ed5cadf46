"""The Detectron2 ``.pkl`` that carries ONE full-width US3L backbone for every width.

``{"model": {d2 trunk name: numpy array}, "__author__": "US3L", "matching_heuristics": True,
"__us3l__": {"format", "arch", "width_range", "calibrated_widths", "source"}}``. Trunk names carry no
model prefix (``stem.conv1.weight``, ``res2.0.conv1.norm.running_mean_w0500``...):
:class:`us3l.d2.checkpoint.US3LCheckpointer` places them explicitly, and a stock Detectron2 checkpointer's
name matching still finds them at width 1.0. ``__author__`` is never "Caffe2" (that would rename keys).
"""
from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Mapping

import numpy as np
import torch

from ..checkpoint import CheckpointError
from ..checkpoint.safe_load import load_pickle
from ..checkpoint.keymaps import rename_all, tv_to_d2

META_KEY = "__us3l__"
AUTHOR = "US3L"
D2_PKL_FORMAT = "us3l.d2/1"


def backbone_to_d2(state: Mapping[str, torch.Tensor], meta: Mapping, source: str = "") -> dict:
    """A ``.pkl`` payload from a full-width torchvision-named backbone (per-width BN statistics kept)."""
    arch = meta.get("arch", "")
    if not str(arch).startswith("resnet"):
        raise CheckpointError(f"only ResNet backbones transfer to Detectron2 here, got {arch!r}")
    if meta.get("cifar_stem"):
        raise CheckpointError("this backbone has a CIFAR stem (3x3 conv, no max-pool); Detectron2's ResNet "
                              "needs the ImageNet stem (7x7 conv + max-pool). Pre-train with the ImageNet stem")
    renamed = rename_all(dict(state), tv_to_d2, f"converting {arch} to Detectron2 names")
    model = {k: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
             for k, v in renamed.items()}
    info = {"format": D2_PKL_FORMAT, "arch": arch, "width_range": [float(v) for v in meta["width_range"]],
            "calibrated_widths": [float(w) for w in meta.get("calibrated_widths", [])],
            "source": str(source or meta.get("source", ""))}
    return {"model": model, "__author__": AUTHOR, "matching_heuristics": True, META_KEY: info}


def write_pkl(payload: Mapping, path: str) -> None:
    """Pickle atomically (temporary file + rename) so a crash never leaves a half-written weights file."""
    if not path.endswith(".pkl"):
        raise CheckpointError(f"Detectron2 reads pickled weights only from files ending in .pkl, got {path!r}")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".pkl")
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump(dict(payload), f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def read_pkl(path: str) -> dict:
    """Read a Detectron2 ``.pkl`` with clear errors for missing files and torch files named ``.pkl``."""
    if not os.path.isfile(path):
        raise CheckpointError(f"weights file not found: {path}")
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(0)
        if head.startswith(b"PK"):
            raise CheckpointError(f"{path} is a torch checkpoint (zip), not a pickled Detectron2 .pkl; convert "
                                  "a US3L checkpoint with tools/convert_pretrain_to_d2.py SRC DST.pkl")
    data = load_pickle(path)  # plain data only: a crafted file is refused, never run
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: a Detectron2 .pkl holds a dict, got {type(data).__name__}")
    return data
