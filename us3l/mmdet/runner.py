"""``US3LRunner``: mmengine's ``Runner`` for US3L detectors (the command line around it: :mod:`us3l.mmdet.engine`).

It loads checkpoints safely and exactly, names an unreadable training image, and runs several CPU processes
(gloo) where mmengine's launcher would need GPUs (:func:`cpu_distributed`).
"""
from __future__ import annotations

import os
import os.path as osp
import re

import torch
import torch.distributed as dist
from mmengine.config import Config
from mmengine.dist import is_main_process
from mmengine.logging import HistoryBuffer
from mmengine.model import is_model_wrapper
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from ..checkpoint import CheckpointError
from ..checkpoint.model_io import load_state_dict_checked
from ..checkpoint.safe_load import load_torch
from ..errors import DatasetFormatError


@RUNNERS.register_module()
class US3LRunner(Runner):
    """mmengine's ``Runner`` whose checkpoint loading (``load_from``, ``--resume``, testing) never runs code from
    the file and fits the detector exactly.

    mmengine reads checkpoints with a bare ``torch.load`` and loads them with ``strict=False`` (a checkpoint of
    another model "loads" with warnings). Here the file is read weights-only with mmengine's trainer state
    allowed (:func:`us3l.checkpoint.safe_load.load_torch`), and every key and shape must match, else
    :class:`CheckpointError` before any tensor is copied.
    """

    def load_checkpoint(self, filename: str, map_location="cpu", strict: bool = True,
                        revise_keys=((r"^module.", ""),)):
        if not osp.isfile(filename):
            raise CheckpointError(f"checkpoint not found (a local file is needed; download URLs first): {filename}")
        checkpoint = load_torch(filename, extra_globals=[HistoryBuffer], map_location=map_location)
        if not isinstance(checkpoint, dict):
            raise CheckpointError(f"{filename}: an MMDetection checkpoint is a dict, got {type(checkpoint).__name__}")
        self.call_hook("after_load_checkpoint", checkpoint=checkpoint)
        model = self.model.module if is_model_wrapper(self.model) else self.model
        state = checkpoint.get("state_dict", checkpoint)
        for pattern, replacement in revise_keys:
            state = {re.sub(pattern, replacement, k): v for k, v in state.items()}
        load_state_dict_checked(model, state, f"loading detector checkpoint {filename}")
        self._has_loaded = True
        self.logger.info(f"Load checkpoint from {filename} (every key and shape matched)")
        return checkpoint

    def save_checkpoint(self, out_dir: str, filename: str, file_client_args=None, **kwargs) -> None:
        """mmengine's save, written atomically (temporary file + rename): a kill or a full disk during a save
        leaves the previous checkpoints as they were, and ``--resume`` finds only complete files."""
        if kwargs.get("backend_args") or file_client_args or "://" in out_dir:
            return super().save_checkpoint(out_dir, filename, file_client_args, **kwargs)  # remote: its own rules
        tmp = f".{filename}.tmp"
        super().save_checkpoint(out_dir, tmp, **kwargs)
        if is_main_process():  # mmengine writes on the main process only
            os.replace(osp.join(out_dir, tmp), osp.join(out_dir, filename))

    def train(self):
        try:
            return super().train()
        except (AssertionError, OSError) as e:
            readable = _unreadable_image(e)
            if readable is None:
                raise
            raise readable from e


# mmcv's LoadImageFromFile: ``assert img is not None, f'failed to load image: {filename}'`` (cv2 backend), or the
# pillow backend's own error, which mmcv re-raises
_FAILED_IMAGE = re.compile(r"failed to load image: (.+)$")


def _unreadable_image(e: BaseException) -> DatasetFormatError | None:
    """A training image that does not decode, as one error naming the file (instead of mmcv's assertion)."""
    m = _FAILED_IMAGE.search(str(e)) if isinstance(e, AssertionError) else None
    if m:
        return DatasetFormatError(f"training image {m.group(1)} cannot be read (not a decodable image file)")
    if type(e).__name__ == "UnidentifiedImageError":
        return DatasetFormatError(f"training image cannot be read ({e})")
    return None


def cpu_distributed(cfg: Config) -> None:
    """Multi-process runs on machines without GPUs (e.g. ``torchrun --nproc_per_node 2 ... --launcher pytorch``).

    mmengine's pytorch launcher pins a CUDA device before it creates the process group, and wraps the model
    in DDP with ``device_ids=[LOCAL_RANK]``; both need a GPU. Here the gloo group is created first (mmengine
    then keeps it) and DDP gets no ``device_ids``, as a CPU module requires.
    """
    if cfg.launcher == "none" or torch.cuda.is_available():
        return
    if cfg.launcher != "pytorch":
        raise SystemExit(f"--launcher {cfg.launcher} without GPUs is not supported; "
                         "use torchrun and --launcher pytorch")
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    wrapper = dict(cfg.get("model_wrapper_cfg") or {})
    wrapper.setdefault("type", "MMDistributedDataParallel")
    wrapper.setdefault("broadcast_buffers", False)
    wrapper["device_ids"] = None
    cfg.model_wrapper_cfg = wrapper
