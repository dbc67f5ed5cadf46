"""Combining per-width calibrated files of ONE run into one ``us3l.backbone/1`` checkpoint.

The reference code calibrates one width per run of its calibration worker and writes one file per width
(``checkpoint_width_{w}.pth.tar``). Their weights are the same pre-trained weights; only the statistics
differ. The combined file holds the weights once and the statistics of every width.
"""
from __future__ import annotations

import torch

from .io import load_backbone, save_backbone
from .report import CheckpointError, LoadReport
from .slicing import has_native_stats

_STATS_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def _is_stats(name: str) -> bool:
    return name.endswith(_STATS_SUFFIXES) or "running_mean_w" in name or "running_var_w" in name


def combine_calibrated(paths: list[str], report: LoadReport | None = None) -> tuple[dict, dict]:
    """(state, meta) holding the weights of ``paths`` (identical in every file) and each file's statistics."""
    if not paths:
        raise CheckpointError("no files to combine")
    state: dict[str, torch.Tensor] = {}
    meta: dict = {}
    widths: set[float] = set()
    for path in paths:
        s, m = load_backbone(path, report=report)
        if m.get("fixed_width") is not None:
            raise CheckpointError(f"{path} is a fixed-width export (width {m['fixed_width']}); only full-width "
                                  "files combine")
        if not m["calibrated_widths"]:
            raise CheckpointError(f"{path} holds no calibrated statistics: nothing to combine")
        if not meta:
            meta = {k: m[k] for k in ("arch", "cifar_stem", "width_range")}
            state = first = {k: v for k, v in s.items() if not _is_stats(k)}
            state = dict(first)
        elif (m["arch"], m["cifar_stem"]) != (meta["arch"], meta["cifar_stem"]):
            raise CheckpointError(f"{path} is a {m['arch']} (CIFAR stem {m['cifar_stem']}), the first file a "
                                  f"{meta['arch']} (CIFAR stem {meta['cifar_stem']})")
        else:
            weights = {k: v for k, v in s.items() if not _is_stats(k)}
            differ = [k for k in first if k not in weights or not torch.equal(first[k], weights[k])]
            if differ or set(weights) != set(first):
                raise CheckpointError(f"{path} has other weights than {paths[0]} (e.g. {differ[:3]}): the files "
                                      "come from different runs or checkpoints and cannot share one file")
        overlap = widths & set(m["calibrated_widths"])
        if overlap:
            raise CheckpointError(f"{path} calibrates width(s) {sorted(overlap)} again; give one file per width")
        widths |= set(m["calibrated_widths"])
        state.update({k: v for k, v in s.items() if _is_stats(k) and not k.endswith("num_batches_tracked")})
    if 1.0 in widths and not has_native_stats(state):
        raise CheckpointError("width 1.0 is listed as calibrated but its statistics are incomplete")
    meta.update(calibrated_widths=sorted(widths), source="combined: " + ", ".join(paths))
    return state, meta


def combine_calibrated_files(paths: list[str], dst: str, report: LoadReport | None = None) -> dict:
    """Combine ``paths`` and write the ``us3l.backbone/1`` file ``dst``; returns its metadata."""
    state, meta = combine_calibrated(paths, report)
    save_backbone(state, meta, dst)
    return meta
