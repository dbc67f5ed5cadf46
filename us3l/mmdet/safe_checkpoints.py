"""Every checkpoint mmengine reads from a local file in this process, read weights-only.

mmengine reads checkpoints through ``CheckpointLoader``'s scheme loaders (``load_from``, ``--resume`` and every
``init_cfg=dict(type='Pretrained', ...)``, on any module of a user's config); its local-file loader calls a bare
``torch.load``, whose ``weights_only`` the user's environment decides: with ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``
a crafted file runs its code. Importing :mod:`us3l.mmdet` re-registers that loader (mmengine's own extension
point) with the project's reader: ``weights_only=True`` passed explicitly, which the variable does not override,
and only the trainer-state types mmengine's own checkpoints hold allowed (:mod:`us3l.checkpoint.safe_load`).
"""
from __future__ import annotations

import os.path as osp

from mmengine.logging import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader

from ..checkpoint.safe_load import load_torch


def load_from_local(filename: str, map_location=None):
    """mmengine's local-file scheme (prefix ``''``), weights-only."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f"{filename} can not be found.")
    return load_torch(filename, extra_globals=[HistoryBuffer], map_location=map_location)


CheckpointLoader.register_scheme(prefixes="", loader=load_from_local, force=True)
