"""Reading and writing backbone checkpoints in every format the project meets.

Formats (all hold only tensors and plain metadata; they load with ``torch.load(weights_only=True)``):

* ``us3l.backbone/1``: ``{"format", "meta", "state_dict"}``, torchvision names at FULL width, plus
  per-width BN statistics ``<bn>.running_mean_w0500`` ... (see :mod:`us3l.ops.norm`).
  ``meta = {"arch", "cifar_stem", "width_range", "calibrated_widths", ...}``.
* ``us3l.pretrain/1``: a pre-training checkpoint; its ``model`` entry holds the online network,
  whose ``backbone.*`` keys are the slimmable backbone.
* the US3L reference code: ``{"state_dict": {"module.encoder_q.<torchvision names>", ...}}``, where
  ``encoder_q.fc.*`` is the projector's first layer (dropped here).
* a plain torchvision state dict (optionally under ``state_dict`` / ``model`` and ``module.``).
"""
from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping

import torch

from ..ops.width_state import DEFAULT_WIDTH_RANGE
from .report import CheckpointError
from .safe_load import load_torch
from .slicing import calibrated_widths_in

BACKBONE_FORMAT = "us3l.backbone/1"
PRETRAIN_FORMAT = "us3l.pretrain/1"


def atomic_save(obj, path: str) -> None:
    """Write to a temporary file in the same folder, then rename: a crash never leaves half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def read_checkpoint(path: str):
    """A torch checkpoint, loaded weights-only (never runs code from the file): :func:`safe_load.load_torch`."""
    return load_torch(path)


def infer_arch(state: Mapping[str, torch.Tensor]) -> tuple[str, bool]:
    """(architecture name, CIFAR stem?) of a torchvision-named backbone state dict."""
    if "features.0.0.weight" in state:
        return "mobilenet_v2", False
    if "conv1.weight" not in state:
        raise CheckpointError("not a ResNet/MobileNetV2 backbone state dict (no conv1.weight / features.0.0.weight); "
                              f"first keys: {list(state)[:5]}")
    bottleneck = "layer1.0.conv3.weight" in state
    n3 = len({m.group(1) for k in state for m in [re.match(r"layer3\.(\d+)\.", k)] if m})
    depth = {(False, 2): 18, (False, 6): 34, (True, 6): 50, (True, 23): 101}.get((bottleneck, n3))
    if depth is None:
        raise CheckpointError(f"unrecognised ResNet layout (bottleneck={bottleneck}, {n3} blocks in layer3)")
    return f"resnet{depth}", state["conv1.weight"].shape[-1] == 3


def _strip(state: Mapping, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def extract_backbone(ckpt) -> tuple[dict[str, torch.Tensor], dict]:
    """Backbone state dict (torchvision names, full width) and metadata from any supported checkpoint."""
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f"a checkpoint must be a dict, got {type(ckpt).__name__}")
    fmt = ckpt.get("format")
    meta = dict(ckpt.get("meta") or {})
    if fmt == BACKBONE_FORMAT:
        state = dict(ckpt["state_dict"])
    elif fmt == PRETRAIN_FORMAT:
        state = _strip(ckpt["model"], "backbone.")
    else:
        state = ckpt
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), Mapping):
                state = state[key]
                break
        if any(k.startswith("module.encoder_q.") for k in state):  # US3L reference code
            state = {k: v for k, v in _strip(state, "module.encoder_q.").items() if not k.startswith("fc.")}
            meta.setdefault("source", "us3l-reference")
        elif any(k.startswith("module.") for k in state):
            state = _strip(state, "module.")
        if any(k.startswith("backbone.") for k in state) and "conv1.weight" not in state:
            state = _strip(state, "backbone.")
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    state = {k: torch.as_tensor(v) for k, v in state.items()}
    arch, cifar = infer_arch(state)
    if meta.get("arch", arch) != arch:
        raise CheckpointError(f"checkpoint metadata says {meta['arch']} but its tensors are {arch}")
    meta.update(arch=arch, cifar_stem=bool(meta.get("cifar_stem", cifar)))
    meta.setdefault("width_range", list(DEFAULT_WIDTH_RANGE))
    # below 1.0 only what the tensors back; 1.0 (the standard running stats) as the metadata says
    full = [1.0] if 1.0 in meta.get("calibrated_widths", []) else []
    meta["calibrated_widths"] = calibrated_widths_in(state) + full
    return state, meta


def load_backbone(path: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a backbone from any supported checkpoint file (clear error on corrupt or foreign files)."""
    return extract_backbone(read_checkpoint(path))


def save_backbone(state: Mapping[str, torch.Tensor], meta: Mapping, path: str) -> None:
    atomic_save({"format": BACKBONE_FORMAT, "meta": dict(meta),
                 "state_dict": {k: v.detach().cpu() for k, v in state.items()}}, path)
