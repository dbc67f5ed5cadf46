"""MMDetection checkpoint files, written and read without MMDetection.

The US3L backbone file ``tools/convert_pretrain_to_mmdet.py`` writes: ONE file for every width::

    dict(state_dict={"backbone.<torchvision names>": full-width tensors, per-width BN statistics},
         meta={"arch", "width_range", "calibrated_widths", "us3l_format", ...})

``US3LResNet`` / ``US3LResLayer`` load it at their width (``init_cfg=dict(type='Pretrained',
checkpoint=..., prefix='backbone.')``). MMDetection's own files are ``{"state_dict", "meta"}``.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping

import torch

from .fit import check_detection_backbone
from .io import (
    BACKBONE_FORMAT,
    PRETRAIN_FORMAT,
    atomic_save,
    extract_backbone,
    load_backbone,
    read_checkpoint,
    read_framework_checkpoint,
)
from .report import CheckpointError, LoadReport

MMDET_BACKBONE_FORMAT = "us3l.mmdet-backbone/1"


def read_mmdet_checkpoint(path: str) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, meta) of an MMDetection checkpoint (``{"state_dict", "meta"}``, or a bare state dict)."""
    obj = read_framework_checkpoint(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: an MMDetection checkpoint is a dict, got {type(obj).__name__}")
    state = obj.get("state_dict", obj)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: no state dict of tensors (keys: {list(obj)[:8]})")
    meta = obj.get("meta") if isinstance(obj.get("meta"), Mapping) else {}
    return dict(state), dict(meta)


def write_mmdet_checkpoint(state: Mapping[str, torch.Tensor], meta: Mapping, path: str) -> None:
    atomic_save({"state_dict": {k: v.detach().cpu() for k, v in state.items()}, "meta": dict(meta)}, path)


def _plain(meta: Mapping) -> dict:
    """Metadata that JSON (and ``torch.load(weights_only=True)``) can hold."""
    out = {}
    for k, v in meta.items():
        try:
            json.dumps(v)
            out[k] = v
        except TypeError:
            out[k] = str(v)
    return out


def backbone_to_mmdet(state: Mapping[str, torch.Tensor], meta: Mapping, source: str = "") -> tuple[dict, dict]:
    """(state dict, meta) of the MMDetection backbone file of a torchvision-named backbone."""
    check_detection_backbone(meta, context=f"converting {meta.get('arch') or 'the backbone'} to MMDetection")
    out = {f"backbone.{k}": v for k, v in state.items()}
    return out, _plain(dict(meta, us3l_format=MMDET_BACKBONE_FORMAT, converted_from=os.path.basename(source)))


def read_full_width_backbone(path: str, prefix: str | None = None, report: LoadReport | None = None
                             ) -> tuple[dict, dict]:
    """Backbone (torchvision names, per-width BN statistics) and metadata from ``path`` for MMDetection.

    Accepts our converted MMDetection files (``backbone.*`` under ``state_dict``; ``prefix`` selects the
    part), US3L backbone / pre-training checkpoints, the reference code's and torchvision's.
    """
    ckpt = read_checkpoint(path)
    if prefix and isinstance(ckpt, Mapping) and ckpt.get("format") not in (BACKBONE_FORMAT, PRETRAIN_FORMAT):
        inner = next((ckpt[k] for k in ("state_dict", "model") if isinstance(ckpt.get(k), Mapping)), ckpt)
        stripped = {k[len(prefix):]: v for k, v in inner.items() if k.startswith(prefix)}
        if stripped:
            meta = ckpt.get("meta") or {}
            if meta.get("us3l_format") == MMDET_BACKBONE_FORMAT:  # written by us: the metadata is authoritative
                return extract_backbone({"format": BACKBONE_FORMAT, "state_dict": stripped, "meta": meta},
                                        source=path, report=report)
            ckpt = {"state_dict": stripped, "meta": meta}
        elif any(k.startswith("backbone.") for k in inner):
            raise CheckpointError(f"{path}: no key starts with prefix {prefix!r} (first keys: {list(inner)[:3]})")
        else:  # a format that needs no prefix (reference code, torchvision)
            try:
                return extract_backbone(ckpt, source=path, report=report)
            except CheckpointError as e:
                raise CheckpointError(f"{path}: no key starts with prefix {prefix!r} and it is no other backbone "
                                      f"format either ({e})") from e
    return extract_backbone(ckpt, source=path, report=report)


def convert_backbone_to_mmdet(src: str, dst: str, width: float | None = None, report: LoadReport | None = None
                              ) -> dict:
    """Read a backbone from ``src`` (any format :func:`load_backbone` reads), write the MMDetection file ``dst``;
    returns its metadata."""
    state, meta = load_backbone(src, width=width, report=report)
    out, meta = backbone_to_mmdet(state, meta, source=src)
    write_mmdet_checkpoint(out, meta, dst)
    return meta


def describe_mmdet_backbone(meta: Mapping) -> str:
    """One line about a written MMDetection backbone file, from the metadata :func:`convert_backbone_to_mmdet`
    returns."""
    return (f"{meta['arch']} backbone (width range {meta['width_range']}, calibrated widths "
            f"{meta['calibrated_widths'] or 'none'})")
