"""A backbone that refuses a partial load, whichever loader does it.

Detectron2's ``DetectionCheckpointer`` drops every tensor whose shape does not fit before it calls
``load_state_dict``, and mmengine's loaders (``load_from``, a model-level ``Pretrained`` init) log such tensors
and go on: a width-sized US3L backbone loaded from a full-width file by either trains from random weights with
a warning only. Our backbones call :func:`refuse_incomplete_load` from ``_load_from_state_dict`` (torch runs a
parent's before its children's, so it sees what the loader brought, before any norm layer fills in defaults)
and a load that leaves one of their tensors missing or of another shape raises, naming the loader that works.
Our own loaders always bring every tensor, fitted to the width.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

import torch.nn as nn

from .report import CheckpointError

# never part of the check: counters (Detectron2's .pkl files omit them) and slimmable BN's per-width statistics,
# which exist only for the widths calibrated so far
_OPTIONAL = re.compile(r"(^|\.)(num_batches_tracked|running_(mean|var)_w\d{4})$")


def refuse_incomplete_load(module: nn.Module, state_dict: Mapping, prefix: str, *, fix: str, within: str = "") -> None:
    """Raise :class:`CheckpointError` when ``state_dict`` lacks one of ``module``'s tensors (those under ``within``
    only, if given) or holds one of another shape; ``fix`` says which loader to use instead."""
    own = {k: v for k, v in module.state_dict().items() if k.startswith(within) and not _OPTIONAL.search(k)}
    missing = [k for k in own if prefix + k not in state_dict]
    mismatched = [f"{prefix}{k}: {tuple(state_dict[prefix + k].shape)} in the checkpoint, {tuple(v.shape)} in the "
                  "model" for k, v in own.items()
                  if prefix + k in state_dict and tuple(getattr(state_dict[prefix + k], "shape", ())) != tuple(v.shape)]
    if not missing and not mismatched:
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {prefix}{missing[0]})")
    if mismatched:
        parts.append(f"{len(mismatched)} of another shape (e.g. {mismatched[0]})")
    raise CheckpointError(
        f"{type(module).__name__} at {prefix.rstrip('.') or 'the top level'}: this load would leave "
        f"{' and '.join(parts)} of its {len(own)} tensors at their random initial values. A US3L backbone file "
        f"holds FULL-width tensors (one file for every width), which the framework's own loader skips at any "
        f"narrower width without an error, as it skips a checkpoint saved at another width. {fix}")
