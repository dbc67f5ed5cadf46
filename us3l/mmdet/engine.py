"""Train / test command lines over mmengine's ``Runner`` (what ``projects/*/mmdet_{train,test}.py`` call).

Thin on purpose: load the config, apply command-line overrides, propagate the width (``apply_width``),
make sure the per-width metrics hook is on, then ``US3LRunner.from_cfg``. ``--launcher pytorch`` with torchrun
gives multi-GPU training exactly as MMDetection's own ``tools/train.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import os.path as osp

from mmengine.config import Config, DictAction

from ..checkpoint import CheckpointError
from ..cli import run_tool
from ..engine.distributed import cleanup
from .runner import US3LRunner, cpu_distributed
from .width_config import apply_width, width_tag


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
    cpu_distributed(cfg)
    if "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(args.local_rank)
    width = apply_width(cfg, args.width)
    if args.work_dir:
        cfg.work_dir = args.work_dir
    elif not cfg.get("work_dir"):
        cfg.work_dir = osp.join("work_dirs", f"{osp.splitext(osp.basename(args.config))[0]}_{width_tag(width)}")
    hooks = list(cfg.get("custom_hooks") or [])
    for hook in ("WidthMetricsHook", "RNGStateHook"):  # per-width metrics; RNG states in checkpoints (exact resume)
        if not any(h.get("type") == hook for h in hooks):
            hooks.append(dict(type=hook))
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
