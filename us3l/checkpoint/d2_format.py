"""Detectron2 checkpoint files, written and read without Detectron2.

The US3L ``.pkl``: ONE full-width backbone for every width (or, with ``fixed_width``, one already sliced)::

    {"model": {d2 trunk name: numpy array}, "__author__": "US3L", "matching_heuristics": True,
     "__us3l__": {"format", "arch", "width_range", "calibrated_widths", "source"[, "fixed_width"]}}

Trunk names carry no model prefix (``stem.conv1.weight``, ``res2.0.conv1.norm.running_mean_w0500``...):
:class:`us3l.d2.checkpoint.US3LCheckpointer` places them explicitly, and a stock Detectron2 checkpointer's
name matching still finds them at width 1.0. ``__author__`` is never "Caffe2" (that would rename keys).
Detectron2's own files (``.pkl`` numpy or ``.pth`` torch, ``{"model": ...}``) are read here too.
"""
from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Mapping

import numpy as np
import torch

from .fit import check_detection_backbone
from .io import atomic_save, load_backbone, read_framework_checkpoint
from .keymaps import rename_all, tv_to_d2
from .report import CheckpointError, LoadReport
from .safe_load import load_pickle

META_KEY = "__us3l__"
AUTHOR = "US3L"
D2_PKL_FORMAT = "us3l.d2/1"
META_FIELDS = ("arch", "cifar_stem", "width_range", "calibrated_widths", "fixed_width", "method", "source")
_TRAINING_STATE = ("optimizer", "scheduler", "iteration")  # never converted


def backbone_to_d2(state: Mapping[str, torch.Tensor], meta: Mapping, source: str = "") -> dict:
    """A ``.pkl`` payload from a torchvision-named backbone (per-width BN statistics kept)."""
    arch = meta.get("arch", "")
    check_detection_backbone(meta, context=f"converting {arch or 'the backbone'} to Detectron2")
    renamed = rename_all(dict(state), tv_to_d2, f"converting {arch} to Detectron2 names")
    model = {k: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
             for k, v in renamed.items()}
    info = {"format": D2_PKL_FORMAT, "arch": arch, "width_range": [float(v) for v in meta["width_range"]],
            "calibrated_widths": [float(w) for w in meta.get("calibrated_widths", [])],
            "source": str(source or meta.get("source", ""))}
    if meta.get("fixed_width") is not None:
        info["fixed_width"] = float(meta["fixed_width"])
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
    """Read a Detectron2 ``.pkl`` (the one pickle reader) with clear errors for missing, corrupt and torch files."""
    if not os.path.isfile(path):
        raise CheckpointError(f"weights file not found: {path}")
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK"):
        raise CheckpointError(f"{path} is a torch checkpoint (zip), not a pickled Detectron2 .pkl; convert "
                              "a US3L checkpoint with tools/convert_pretrain_to_d2.py SRC DST.pkl")
    data = load_pickle(path)  # plain data only: a crafted file is refused, never run
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: a Detectron2 .pkl holds a dict, got {type(data).__name__}")
    return data


def as_tensor(name: str, value) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):  # (np.ascontiguousarray would turn a 0-d counter into shape (1,))
        return torch.from_numpy(value if value.flags.c_contiguous else value.copy(order="C"))
    if isinstance(value, (np.generic, int, float)):
        return torch.as_tensor(np.asarray(value))
    raise CheckpointError(f"entry {name!r} of the model is a {type(value).__name__}, not a tensor")


def read_d2_checkpoint(path: str) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, top-level metadata) of a Detectron2 ``.pkl`` (numpy) or ``.pth`` (torch) checkpoint."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    obj = read_pkl(path) if path.endswith(".pkl") else read_framework_checkpoint(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: a Detectron2 checkpoint is a dict, got {type(obj).__name__}")
    if "blobs" in obj:
        raise CheckpointError(f"{path}: Caffe2-format Detectron checkpoints are not supported")
    if "model" in obj:  # DetectionCheckpointer / model zoo / MoCo files
        model, extras = obj["model"], {k: v for k, v in obj.items() if k != "model" and k not in _TRAINING_STATE}
    else:  # a bare ``model.state_dict()``
        model, extras = obj, {}
    if not isinstance(model, Mapping):
        raise CheckpointError(f"{path}: 'model' is a {type(model).__name__}, not a state dict")
    return {k: as_tensor(k, v) for k, v in model.items()}, extras


def write_d2_checkpoint(state: Mapping[str, torch.Tensor], extras: Mapping, path: str) -> None:
    """``.pkl``: numpy arrays as Detectron2's model zoo; any other suffix: a torch file ``{"model": ...}``."""
    if path.endswith(".pkl"):
        write_pkl({"model": {k: v.detach().cpu().numpy() for k, v in state.items()}, **extras}, path)
    else:
        atomic_save({"model": {k: v.detach().cpu() for k, v in state.items()}, **extras}, path)


def convert_backbone_to_d2(src: str, dst: str, width: float | None = None, report: LoadReport | None = None) -> dict:
    """Read a backbone from ``src`` (any format :func:`load_backbone` reads), write the ``.pkl`` ``dst``."""
    if not dst.endswith(".pkl"):
        raise CheckpointError(f"DST must end in .pkl (Detectron2 reads this format only from .pkl files): {dst}")
    state, meta = load_backbone(src, width=width, report=report)
    payload = backbone_to_d2(state, meta, source=src)
    write_pkl(payload, dst)
    return payload


def describe_d2_backbone(payload: Mapping) -> str:
    info, model = payload[META_KEY], payload["model"]
    stats = [k for k in model if "_w" in k.rsplit(".", 1)[-1]]
    fixed = f", fixed at width {info['fixed_width']}" if "fixed_width" in info else ""
    lines = [f"converted {len(model)} tensors of a {info['arch']} backbone{fixed} "
             f"({len(model) - len(stats)} trunk tensors + {len(stats)} per-width BN statistics)",
             f"width range {info['width_range']}, calibrated widths {info['calibrated_widths'] or 'none'}"]
    if not info["calibrated_widths"]:
        lines.append("  no width is calibrated: calibrate (tools/calibrate_bn.py) or fine-tune with "
                     "MODEL.US3L.BN_STATS reset")
    return "\n".join(lines)
