"""Train / test entry points over mmengine's ``Runner`` (what ``projects/*/mmdet_{train,test}.py`` call).

Thin on purpose: load the config, apply command-line overrides, propagate the width (``apply_width``),
make sure the per-width metrics hook is on, then ``Runner.from_cfg``. ``--launcher pytorch`` with torchrun
gives multi-GPU training exactly as MMDetection's own ``tools/train.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import os.path as osp
import re

import torch
import torch.distributed as dist
from mmengine.config import Config, DictAction
from mmengine.logging import HistoryBuffer
from mmengine.model import is_model_wrapper
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from ..checkpoint import CheckpointError
from ..checkpoint.model_io import load_state_dict_checked
from ..checkpoint.safe_load import load_torch
from ..cli import run_tool
from ..engine.distributed import cleanup
from .width_config import apply_width, width_tag


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


def _cpu_distributed(cfg: Config) -> None:
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


def _common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--work-dir", help="where logs, checkpoints and metrics_w<width>.json go")
    p.add_argument("--width", type=float, help="detector width (sets model.backbone.width_mult and every "
                                                "channel count that follows it)")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, help="override config entries, key=value")
    p.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    p.add_argument("--local_rank", "--local-rank", type=int, default=0)


def build_cfg(args) -> Config:
    """The config a run uses: file + overrides + one width everywhere + per-width metrics + work dir."""
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    cfg.launcher = args.launcher
    _cpu_distributed(cfg)
    if "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(args.local_rank)
    width = apply_width(cfg, args.width)
    if args.work_dir:
        cfg.work_dir = args.work_dir
    elif not cfg.get("work_dir"):
        cfg.work_dir = osp.join("work_dirs", f"{osp.splitext(osp.basename(args.config))[0]}_{width_tag(width)}")
    hooks = list(cfg.get("custom_hooks") or [])
    if not any(h.get("type") == "WidthMetricsHook" for h in hooks):
        hooks.append(dict(type="WidthMetricsHook"))
    cfg.custom_hooks = hooks
    return cfg


def train_main(argv=None):
    p = argparse.ArgumentParser(description="Fine-tune a US3L detector at one width (MMDetection 3.x)")
    p.add_argument("config")
    p.add_argument("--resume", action="store_true", help="resume from the latest checkpoint in the work dir")
    _common_args(p)
    args = p.parse_args(argv)
    cfg = build_cfg(args)
    cfg.resume = args.resume
    runner = US3LRunner.from_cfg(cfg)
    runner.train()
    cleanup()  # mmengine leaves the process group to the exit
    return runner


def test_main(argv=None):
    p = argparse.ArgumentParser(description="Evaluate a US3L detector checkpoint at its width (COCO box/mask AP)")
    p.add_argument("config")
    p.add_argument("checkpoint")
    _common_args(p)
    args = p.parse_args(argv)
    if not osp.isfile(args.checkpoint):
        raise CheckpointError(f"checkpoint not found: {args.checkpoint}")
    cfg = build_cfg(args)
    cfg.load_from = args.checkpoint
    # the detector's weights come from the checkpoint: do not read the pre-trained backbone file again
    _drop_pretrained(cfg.model)
    runner = US3LRunner.from_cfg(cfg)
    metrics = runner.test()
    cleanup()  # mmengine leaves the process group to the exit
    print(json.dumps({k: (float(v) if isinstance(v, (int, float)) else str(v)) for k, v in metrics.items()},
                     indent=1))
    return metrics


def _drop_pretrained(node) -> None:
    if isinstance(node, dict):
        init = node.get("init_cfg")
        if isinstance(init, dict) and init.get("type") == "Pretrained":
            node["init_cfg"] = None
        for v in node.values():
            _drop_pretrained(v)


def train_cli() -> int:
    """Console script ``us3l-mmdet-train`` (exit codes: :mod:`us3l.cli`)."""
    return run_tool(train_main)


def test_cli() -> int:
    """Console script ``us3l-mmdet-test`` (exit codes: :mod:`us3l.cli`)."""
    return run_tool(test_main)
