"""Loading ONE full-width US3L checkpoint into a width-sized MMDetection module, with a hard error on mismatch.

mmengine's ``PretrainedInit`` only logs missing/unexpected keys and skips shape mismatches, so a width or
depth mistake would train from random weights without notice. Our modules override ``init_weights`` and
load here instead: read (:func:`us3l.checkpoint.mmdet_format.read_full_width_backbone`) -> fit to the width
(:func:`us3l.checkpoint.fit_backbone`) -> load; the names need no prefix here (torchvision = mmdet's).
"""
from __future__ import annotations

from collections.abc import Mapping

import torch.nn as nn
from mmengine.logging import print_log

from ..checkpoint import CheckpointError, LoadReport, fit_backbone
from ..checkpoint.mmdet_format import read_full_width_backbone

# what a user of mmengine's own loaders is told when a load would skip tensors (us3l.checkpoint.guard)
LOADER_FIX = ("Load a US3L backbone through the backbone's own init_cfg=dict(type='Pretrained', checkpoint=PATH, "
              "prefix='backbone.') (and the same on a C4 model's shared head), which fits it to the width; "
              "mmengine's load_from and a detector-level Pretrained init_cfg match tensors by shape only. "
              "load_from is for checkpoints of this same detector (a resume, fine-tuned weights)")


def pretrained_cfg(init_cfg) -> dict | None:
    """The ``type='Pretrained'`` entry of an ``init_cfg`` (a dict or a list of dicts), if any."""
    cfgs = init_cfg if isinstance(init_cfg, (list, tuple)) else [init_cfg] if init_cfg else []
    found = [c for c in cfgs if c.get("type") == "Pretrained"]
    if len(found) > 1:
        raise ValueError(f"init_cfg has {len(found)} 'Pretrained' entries; give one")
    return dict(found[0]) if found else None


def load_width_sized(module: nn.Module, init_cfg: Mapping, *, depth: int, width: float, bn_stats: str,
                     context: str, norms_frozen: bool = False) -> LoadReport:
    """Load the tensors ``module`` holds (its top-level children's) from a full-width checkpoint at ``width``."""
    path = init_cfg.get("checkpoint")
    if not path:
        raise ValueError(f"{context}: init_cfg type='Pretrained' needs a 'checkpoint' path")
    own = module.state_dict()
    if bn_stats == "reset" and norms_frozen and any(k.endswith("running_mean") for k in own):
        raise CheckpointError(f"{context}: bn_stats='reset' re-estimates BN statistics while fine-tuning, but "
                              "norm_eval=True (or frozen_stages) keeps them at mean 0 / var 1: set norm_eval=False "
                              "and frozen_stages=-1, or calibrate the width (tools/calibrate_bn.py) and keep "
                              "bn_stats='calibrated'")
    report = LoadReport()
    state, meta = read_full_width_backbone(path, init_cfg.get("prefix"), report=report)
    tensors, report = fit_backbone(state, meta, own, width=width, bn_stats=bn_stats, depth=depth,
                                   context=f"{context}: {path}", model=f"depth={depth} (resnet{depth})", report=report)
    report.raise_if_bad(f"{context}: loading {path} at width {width}")
    module.load_state_dict(tensors, strict=True)
    print_log(f"{context}: loaded {path} at width {width} (BN statistics: {bn_stats}): {report.summary()}",
              logger="current")
    return report
