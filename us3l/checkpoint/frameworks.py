"""Detectron2 / MMDetection checkpoint files and whole-model conversion between them (no framework needed).

Why here: the converters in ``tools/`` and the tests share one implementation, and converting must work on
a machine that has only one of the two frameworks. Names come from :mod:`us3l.checkpoint.keymaps`; this
module adds file formats, the tensor reordering the RPN needs, and a hard error on anything unmapped.

Round trip: Detectron2 -> MMDetection -> Detectron2 gives back every tensor bit for bit under its original
name, and the top-level metadata of the Detectron2 file (kept in the MMDetection ``meta['d2']``).
"""
from __future__ import annotations

import dataclasses
import os
import pickle
from collections.abc import Mapping

import numpy as np
import torch

from .io import atomic_save
from .keymaps import (detect_d2_layout, detect_mmdet_layout, d2_to_mmdet, mmdet_to_d2,
                      permute_anchors)
from .report import CheckpointError
from .safe_load import load_any, load_torch

US3L_D2_META_KEY = "__us3l__"  # metadata entry of the .pkl files tools/convert_pretrain_to_d2.py writes
US3L_D2_FORMAT = "us3l.d2/1"  # = us3l.d2.pkl_format.D2_PKL_FORMAT (not imported: that needs Detectron2)
_D2_DROPPED = ("optimizer", "scheduler", "iteration")  # training state: never converted
_META_KEYS = ("arch", "cifar_stem", "width_range", "calibrated_widths", "method", "source")
RPN_CLS = ("proposal_generator.rpn_head.objectness_logits.", "rpn_head.rpn_cls.")
RPN_REG = ("proposal_generator.rpn_head.anchor_deltas.", "rpn_head.rpn_reg.")


@dataclasses.dataclass
class Conversion:
    """What a conversion did: every renamed key, what was left out and why."""
    layout: str
    renamed: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    def summary(self, verbose: bool = True) -> str:
        lines = [f"layout: {self.layout}; {len(self.renamed)} tensors converted, {len(self.skipped)} skipped"]
        if verbose:
            lines += [f"  {a} -> {b}" for a, b in self.renamed]
        lines += [f"  skipped (no counterpart): {k}" for k in self.skipped]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- files
def _load_trusted(path: str):
    """``torch.load(weights_only=True)`` with the trainer-state allowlist (numpy scalars, mmengine HistoryBuffer
    stood in for): framework training checkpoints convert, a file that would run code is refused."""
    return load_torch(path)


def _as_tensor(name: str, value) -> torch.Tensor:
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
    obj = load_any(path)  # plain-data unpickler for .pkl, weights-only torch.load otherwise
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: a Detectron2 checkpoint is a dict, got {type(obj).__name__}")
    if "blobs" in obj:
        raise CheckpointError(f"{path}: Caffe2-format Detectron checkpoints are not supported")
    if "model" in obj:  # DetectionCheckpointer / model zoo / MoCo files
        model, extras = obj["model"], {k: v for k, v in obj.items() if k != "model" and k not in _D2_DROPPED}
    else:  # a bare ``model.state_dict()``
        model, extras = obj, {}
    if not isinstance(model, Mapping):
        raise CheckpointError(f"{path}: 'model' is a {type(model).__name__}, not a state dict")
    state = {k: _as_tensor(k, v) for k, v in model.items()}
    return state, extras


def write_d2_checkpoint(state: Mapping[str, torch.Tensor], extras: Mapping, path: str) -> None:
    """``.pkl``: numpy arrays as Detectron2's model zoo; any other suffix: a torch file ``{"model": ...}``."""
    if path.endswith(".pkl"):
        obj = {"model": {k: v.detach().cpu().numpy() for k, v in state.items()}, **extras}
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            pickle.dump(obj, f)
        os.replace(tmp, path)
    else:
        atomic_save({"model": {k: v.detach().cpu() for k, v in state.items()}, **extras}, path)


def read_mmdet_checkpoint(path: str) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, meta) of an MMDetection checkpoint (``{"state_dict", "meta"}``, or a bare state dict)."""
    obj = _load_trusted(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: an MMDetection checkpoint is a dict, got {type(obj).__name__}")
    state = obj.get("state_dict", obj)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: no state dict of tensors (keys: {list(obj)[:8]})")
    meta = obj.get("meta") if isinstance(obj.get("meta"), Mapping) else {}
    return dict(state), dict(meta)


def write_mmdet_checkpoint(state: Mapping[str, torch.Tensor], meta: Mapping, path: str) -> None:
    atomic_save({"state_dict": {k: v.detach().cpu() for k, v in state.items()}, "meta": dict(meta)}, path)


# -------------------------------------------------------------------------------------------- conversion
def _is_backbone_d2(name: str, layout: str) -> bool:
    trunk = {"trunk": "", "fpn": "backbone.bottom_up.", "c4": "backbone."}[layout]
    return name.startswith(trunk) and not name.startswith("backbone.fpn_") or name.startswith("roi_heads.res5.")


def _rpn_grid(state: Mapping[str, torch.Tensor], cls_prefix: str, num_ratios: int, conv: Conversion):
    """(sizes, ratios) per location of the RPN, from its objectness layer (``None`` without an RPN)."""
    w = state.get(cls_prefix + "weight", state.get(cls_prefix + "bias"))
    if w is None:
        return None
    a = w.shape[0]
    if a % num_ratios:
        raise CheckpointError(f"the RPN predicts {a} anchors per location, not a multiple of {num_ratios} aspect "
                              "ratios: pass the right --num-ratios")
    sizes = a // num_ratios
    if sizes > 1:
        conv.notes.append(f"RPN: {a} anchors per location = {sizes} sizes x {num_ratios} ratios; reordered "
                          "between Detectron2's size-major and MMDetection's ratio-major enumeration")
    return sizes, num_ratios


def _fail_unmapped(unmapped: list[str], backbone: list[str], direction: str, skip_heads: bool,
                   conv: Conversion) -> None:
    if backbone:
        raise CheckpointError(f"{direction}: {len(backbone)} backbone keys have no counterpart, e.g. {backbone[:5]}")
    if unmapped and not skip_heads:
        raise CheckpointError(
            f"{direction}: {len(unmapped)} keys have no counterpart (heads that do not correspond between the "
            f"frameworks), e.g. {unmapped[:5]}. Pass --skip-unmapped-heads to leave them out")
    conv.skipped.extend(unmapped)


def _rename_state(state: Mapping[str, torch.Tensor], rename, is_backbone, *, src: int, num_ratios: int,
                  skip_unmapped_heads: bool, conv: Conversion) -> tuple[dict[str, torch.Tensor], Conversion]:
    """Rename every key one way (``src`` 0: from Detectron2, 1: from MMDetection), reordering RPN anchors
    where the frameworks list them differently; unmapped backbone keys always fail."""
    direction, to = ("Detectron2 -> MMDetection", "mmdet") if src == 0 else ("MMDetection -> Detectron2", "d2")
    grid = _rpn_grid(state, RPN_CLS[src], num_ratios, conv)
    out, unmapped, backbone = {}, [], []
    for k, v in state.items():
        new = rename(k)
        if new is None:
            (backbone if is_backbone(k) else unmapped).append(k)
            continue
        if grid and k.startswith((RPN_CLS[src], RPN_REG[src])):
            v = permute_anchors(v, *grid, to=to)
        out[new] = v
        conv.renamed.append((k, new))
    _fail_unmapped(unmapped, backbone, direction, skip_unmapped_heads, conv)
    return out, conv


def d2_to_mmdet_state(state: Mapping[str, torch.Tensor], num_ratios: int = 3, skip_unmapped_heads: bool = False,
                      layout: str | None = None) -> tuple[dict[str, torch.Tensor], Conversion]:
    """MMDetection state dict of a Detectron2 one (trunk, ResNet-FPN or C4 detector)."""
    layout = layout or detect_d2_layout(state)
    conv = Conversion(layout)
    has_stats = any(k.startswith("backbone.fpn_") and k.endswith(".norm.running_mean") for k in state)
    has_norm = any(k.startswith("backbone.fpn_") and ".norm." in k for k in state)
    fpn_norm = "gn" if has_norm and not has_stats else "bn"
    return _rename_state(state, lambda k: d2_to_mmdet(k, layout, fpn_norm), lambda k: _is_backbone_d2(k, layout),
                         src=0, num_ratios=num_ratios, skip_unmapped_heads=skip_unmapped_heads, conv=conv)


def mmdet_to_d2_state(state: Mapping[str, torch.Tensor], num_ratios: int = 3, skip_unmapped_heads: bool = False,
                      layout: str | None = None) -> tuple[dict[str, torch.Tensor], Conversion]:
    """Detectron2 state dict of an MMDetection one; ``layout`` defaults to what the keys show."""
    layout = layout or detect_mmdet_layout(state)
    conv = Conversion(layout)
    return _rename_state(state, lambda k: mmdet_to_d2(k, layout),
                         lambda k: k.startswith(("backbone.", "roi_head.shared_head.")),
                         src=1, num_ratios=num_ratios, skip_unmapped_heads=skip_unmapped_heads, conv=conv)


def d2_meta_to_mmdet(extras: Mapping, layout: str) -> dict:
    """MMDetection ``meta``: our backbone metadata at top level (read by the US3L backbone loader) and the
    Detectron2 file's own top-level entries under ``d2`` (restored by the reverse conversion)."""
    meta = {"d2": {"layout": layout, "extras": dict(extras)}}
    us3l = extras.get(US3L_D2_META_KEY)
    if isinstance(us3l, Mapping):
        meta.update({k: us3l[k] for k in _META_KEYS if k in us3l})
    return meta


def mmdet_meta_to_d2(meta: Mapping, layout: str) -> dict:
    """Top-level entries of the Detectron2 file: the original ones after a round trip, else our defaults."""
    d2 = meta.get("d2")
    if isinstance(d2, Mapping) and d2.get("layout") == layout and isinstance(d2.get("extras"), Mapping):
        return dict(d2["extras"])
    # a bare trunk is matched into detectors by Detectron2's name heuristics (as MoCo's converted weights)
    extras = {"__author__": "US3L", "matching_heuristics": layout == "trunk"}
    if "arch" in meta:  # what the Detectron2 plugin's loader checks (us3l.d2.pkl_format)
        extras[US3L_D2_META_KEY] = {"format": US3L_D2_FORMAT, **{k: meta[k] for k in _META_KEYS if k in meta}}
    return extras
