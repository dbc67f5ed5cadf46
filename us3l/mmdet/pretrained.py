"""Loading ONE full-width US3L checkpoint into a width-sized MMDetection module, with a hard error on mismatch.

mmengine's ``PretrainedInit`` only logs missing/unexpected keys and skips shape mismatches, so a width or
depth mistake would train from random weights without notice. Our modules override ``init_weights`` and
load here instead: read -> this width's BN statistics -> prefix slice -> complete check -> load.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch.nn as nn
import re

from mmengine.logging import print_log

from ..checkpoint import (BACKBONE_FORMAT, PRETRAIN_FORMAT, CheckpointError, LoadReport, extract_backbone,
                          read_checkpoint, select_width_stats, slice_to_shapes)

_BN_STATS = re.compile(r"(running_mean|running_var|num_batches_tracked)(_w\d{4})?$")


def pretrained_cfg(init_cfg) -> dict | None:
    """The ``type='Pretrained'`` entry of an ``init_cfg`` (a dict or a list of dicts), if any."""
    cfgs = init_cfg if isinstance(init_cfg, (list, tuple)) else [init_cfg] if init_cfg else []
    found = [c for c in cfgs if c.get("type") == "Pretrained"]
    if len(found) > 1:
        raise ValueError(f"init_cfg has {len(found)} 'Pretrained' entries; give one")
    return dict(found[0]) if found else None


def read_full_width_backbone(path: str, prefix: str | None = None) -> tuple[dict, dict]:
    """Full-width backbone (torchvision names, per-width BN statistics) and metadata from ``path``.

    Accepts our converted MMDetection files (``backbone.*`` under ``state_dict``; ``prefix`` selects the
    part), US3L backbone / pre-training checkpoints, the reference code's and torchvision's.
    """
    ckpt = read_checkpoint(path)
    if prefix and isinstance(ckpt, Mapping) and ckpt.get("format") not in (BACKBONE_FORMAT, PRETRAIN_FORMAT):
        inner = next((ckpt[k] for k in ("state_dict", "model") if isinstance(ckpt.get(k), Mapping)), ckpt)
        stripped = {k[len(prefix):]: v for k, v in inner.items() if k.startswith(prefix)}
        if stripped:
            ckpt = {"state_dict": stripped, "meta": ckpt.get("meta") or {}}
        elif any(k.startswith("backbone.") for k in inner):
            raise CheckpointError(f"{path}: no key starts with prefix {prefix!r} (first keys: {list(inner)[:3]})")
        else:  # a format that needs no prefix (reference code, torchvision)
            try:
                return extract_backbone(ckpt)
            except CheckpointError as e:
                raise CheckpointError(f"{path}: no key starts with prefix {prefix!r} and it is no other backbone "
                                      f"format either ({e})") from e
    return extract_backbone(ckpt)


def load_width_sized(module: nn.Module, init_cfg: Mapping, *, depth: int, width: float, bn_stats: str,
                     context: str) -> LoadReport:
    """Load the tensors ``module`` holds (its top-level children's) from a full-width checkpoint at ``width``."""
    path = init_cfg.get("checkpoint")
    if not path:
        raise ValueError(f"{context}: init_cfg type='Pretrained' needs a 'checkpoint' path")
    state, meta = read_full_width_backbone(path, init_cfg.get("prefix"))
    if meta["arch"] != f"resnet{depth}":
        raise CheckpointError(f"{context}: {path} holds a {meta['arch']} backbone but the model is "
                              f"depth={depth} (resnet{depth}); set depth to match the checkpoint")
    if meta.get("cifar_stem"):
        raise CheckpointError(f"{context}: {path} has a CIFAR (3x3) stem; detection needs the ImageNet stem")
    lo, hi = (float(v) for v in meta["width_range"])
    if not lo - 1e-9 <= width <= hi + 1e-9:
        raise CheckpointError(f"{context}: width {width} is outside the width range [{lo}, {hi}] that {path} "
                              "was trained for")
    own = module.state_dict()
    if any(k.endswith("running_mean") for k in own):
        state = select_width_stats(state, width, bn_stats)
    else:  # GroupNorm: BN statistics have no use
        state = {k: v for k, v in state.items() if not _BN_STATS.search(k)}
    owned_parts = {k.split(".", 1)[0] for k in own}
    state = {k: v for k, v in state.items() if k.split(".", 1)[0] in owned_parts}
    # BN batch counters are bookkeeping, absent from Detectron2-born files: keep the module's own
    for k, v in own.items():
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = v
    tensors, report = slice_to_shapes(state, {k: v.shape for k, v in own.items()})
    report.raise_if_bad(f"{context}: loading {path} at width {width}")
    module.load_state_dict(tensors, strict=True)
    print_log(f"{context}: loaded {path} at width {width} (BN statistics: {bn_stats}): {report.summary()}",
              logger="current")
    return report
