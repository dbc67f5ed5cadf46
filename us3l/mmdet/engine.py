"""Train / test command lines over mmengine's ``Runner`` (what ``projects/*/mmdet_{train,test}.py`` call).

Thin on purpose: load the config, apply command-line overrides, propagate the width (``apply_width``),
make sure the per-width metrics hook is on, then ``US3LRunner.from_cfg``. ``--launcher pytorch`` with torchrun
gives multi-GPU training exactly as MMDetection's own ``tools/train.py``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import os.path as osp

from mmengine.config import Config, DictAction
from mmengine.logging import print_log

from ..checkpoint import CheckpointError, resume_files
from ..checkpoint.safe_load import check_checkpoint_file
from ..cli import run_tool
from ..engine.distributed import cleanup
from ..output_paths import check_output_dir
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
    check_output_dir(cfg.work_dir, "--work-dir" if args.work_dir else "work_dir")
    hooks = list(cfg.get("custom_hooks") or [])
    for hook in ("WidthMetricsHook", "RNGStateHook"):  # per-width metrics; RNG states in checkpoints (exact resume)
        if not any(h.get("type") == hook for h in hooks):
            hooks.append(dict(type=hook))
    cfg.custom_hooks = hooks
    train_cfg = cfg.get("train_cfg")
    if isinstance(train_cfg, dict) and (train_cfg.get("type") == "EpochBasedTrainLoop"
                                        or ("type" not in train_cfg and train_cfg.get("by_epoch"))):
        train_cfg.pop("by_epoch", None)
        train_cfg["type"] = "US3LEpochBasedTrainLoop"  # resumes in mid-epoch exactly (us3l.mmdet.loops)
    return cfg


def train_main(argv=None):
    p = argparse.ArgumentParser(description="Fine-tune a US3L detector at one width (MMDetection 3.x)")
    p.add_argument("config")
    p.add_argument("--resume", nargs="?", const="auto", metavar="CHECKPOINT",
                   help="resume from CHECKPOINT, or without it from the latest checkpoint in the work dir (a damaged "
                        "one: the newest intact one beside it)")
    _common_args(p)
    args = p.parse_args(argv)
    cfg = build_cfg(args)
    cfg.resume = bool(args.resume)
    if args.resume not in (None, "auto"):
        cfg.load_from = args.resume  # as MMDetection's tools/train.py
    resolve_resume(cfg, explicit=args.resume not in (None, "auto"))
    check_before_runner(cfg, ["train_dataloader", *(["val_dataloader"] if cfg.get("val_cfg") else [])])
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
    cfg = build_cfg(args)
    cfg.load_from = args.checkpoint
    # the detector's weights come from the checkpoint: do not read the pre-trained backbone file again
    _drop_pretrained(cfg.model)
    check_before_runner(cfg, ["test_dataloader"])
    runner = US3LRunner.from_cfg(cfg)
    metrics = runner.test()
    cleanup()  # mmengine leaves the process group to the exit
    print(json.dumps({k: (float(v) if isinstance(v, (int, float)) else str(v)) for k, v in metrics.items()},
                     indent=1))
    return metrics


def resolve_resume(cfg: Config, explicit: bool) -> None:
    """Before the runner writes anything: the checkpoint ``--resume`` continues from. A damaged file the user named
    is an error; a damaged latest one (``last_checkpoint``) gives way to the newest intact checkpoint beside it, and
    the log says so; with none intact, an error."""
    if not cfg.resume:
        return
    if explicit:
        problem = resume_files.why_unreadable(cfg.load_from)
        if problem:
            raise CheckpointError(f"--resume {cfg.load_from}: the checkpoint is {problem}")
        return
    last = osp.join(cfg.work_dir, "last_checkpoint")
    if not osp.isfile(last):
        return  # nothing to resume: mmengine starts from the beginning
    with open(last) as f:
        named = f.read().strip()
    named = named if osp.isabs(named) else osp.join(cfg.work_dir, named)
    problem = resume_files.why_unreadable(named)
    if problem is None:
        cfg.load_from = named
        return
    intact = resume_files.newest_intact(cfg.work_dir, ["epoch_*.pth", "iter_*.pth"], order=osp.getmtime, skip=named)
    if intact is None:
        raise CheckpointError(f"--resume: {named} (named in last_checkpoint) is {problem} and no intact checkpoint "
                              "is beside it: rerun without --resume to start again; nothing was written")
    print_log(f"--resume: {named} (named in last_checkpoint) is {problem}; resuming from {intact}, the newest "
              "intact checkpoint beside it", logger="current", level=logging.WARNING)
    cfg.load_from = intact


def check_before_runner(cfg: Config, loaders: list[str]) -> None:
    """The checkpoints a run loads (``load_from``, every ``Pretrained`` init_cfg) and the datasets of ``loaders``,
    before mmengine's ``Runner`` makes the work dir and its log: a refused run leaves nothing behind."""
    if cfg.get("load_from"):
        check_checkpoint_file(cfg.load_from, "checkpoint", torch_only=True)
    for path in _pretrained_paths(cfg.model):
        if "://" not in path:  # a URL is mmengine's to fetch
            check_checkpoint_file(path, "init_cfg Pretrained checkpoint (model...init_cfg.checkpoint)", torch_only=True)
    for name in loaders:
        dataset = (cfg.get(name) or {}).get("dataset")
        while isinstance(dataset, dict) and "ann_file" not in dataset and isinstance(dataset.get("dataset"), dict):
            dataset = dataset["dataset"]  # RepeatDataset, ClassBalancedDataset...
        if isinstance(dataset, dict):
            _check_dataset_files(name, dataset)


def _check_dataset_files(loader: str, dataset: dict) -> None:
    root = dataset.get("data_root") or ""
    ann = dataset.get("ann_file")
    if "://" in root or "://" in (ann or ""):
        return  # remote storage (petrel, s3...): mmengine's file backends read it
    hint = ("the embedded set is written by tools/make_embedded_dataset.py under $US3L_DATASETS/us3l_shapes "
            f"(now {osp.abspath(os.environ.get('US3L_DATASETS', 'datasets'))})")
    if ann and not osp.isfile(osp.join(root, ann)):
        raise FileNotFoundError(f"{loader}.dataset.ann_file: {osp.join(root, ann)} not found; {hint}")
    img = (dataset.get("data_prefix") or {}).get("img")
    if img is not None and not osp.isdir(osp.join(root, img)):
        raise FileNotFoundError(f"{loader}.dataset.data_prefix.img: image folder {osp.join(root, img)} not found; "
                                f"{hint}")


def _config_nodes(node):
    """Every dict of a config tree (``node`` first), each yielded before its values are visited."""
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _config_nodes(v)
    elif isinstance(node, list):
        for v in node:
            yield from _config_nodes(v)


def _is_pretrained(init) -> bool:
    return isinstance(init, dict) and init.get("type") == "Pretrained"


def _pretrained_paths(node) -> list[str]:
    found = []
    for n in _config_nodes(node):
        init = n.get("init_cfg")
        found += [e["checkpoint"] for e in (init if isinstance(init, list) else [init])
                  if _is_pretrained(e) and e.get("checkpoint")]
    return found


def _drop_pretrained(node) -> None:
    for n in _config_nodes(node):
        if _is_pretrained(n.get("init_cfg")):
            n["init_cfg"] = None


def train_cli() -> int:
    """Console script ``us3l-mmdet-train`` (exit codes: :mod:`us3l.cli`)."""
    return run_tool(train_main)


def test_cli() -> int:
    """Console script ``us3l-mmdet-test`` (exit codes: :mod:`us3l.cli`)."""
    return run_tool(test_main)
