"""Training / evaluation command line shared by ``projects/detection`` and ``projects/segmentation``.

``get_cfg -> add_us3l_config -> merge_from_file -> merge_from_list -> freeze -> default_setup``, then
Detectron2's ``launch`` (``--num-gpus``/``--num-machines``/``--dist-url``), with :class:`us3l.d2.trainer.US3LTrainer`
(or the slimmable detector's trainer, :func:`us3l.d2.sandwich.trainer_class`).
"""
from __future__ import annotations

import os

import torch
from detectron2.engine import default_argument_parser, default_setup, launch

from ..checkpoint import CheckpointError
from ..checkpoint.safe_load import check_checkpoint_file, is_pickle_file, load_pickle
from ..cli import run_tool
from ..output_paths import check_output_dir
from .checkpoint import check_resumable
from .config import calibration_widths_checked, load_config, us3l_width
from .datasets import check_datasets, register_coco_json, register_us3l_datasets
from .sandwich import trainer_class
from .trainer import US3LTrainer


def argument_parser():
    parser = default_argument_parser()
    parser.add_argument("--cpu-processes", type=int, default=0, metavar="N",
                        help="train with N CPU processes (gloo) instead of --num-gpus GPU processes: distributed "
                             "code paths without GPUs (use a config with plain BN and MODEL.DEVICE cpu)")
    parser.add_argument("--dataset", nargs=3, action="append", default=[], metavar=("NAME", "JSON", "IMAGE_ROOT"),
                        help="register a COCO-format instance set under NAME (repeatable)")
    return parser


def setup(args):
    """The config, every refusal before Detectron2's ``default_setup`` writes ``config.yaml`` and ``log.txt`` into
    OUTPUT_DIR (a refused run leaves nothing behind), then ``default_setup``."""
    cfg = load_config(args.config_file, args.opts)
    cfg.freeze()
    check_output_dir(cfg.OUTPUT_DIR, "OUTPUT_DIR")
    us3l_width(cfg)  # a bad width fails here, before any data is read
    calibration_widths_checked(cfg)  # and so does a bad calibration width (it would fail after the training)
    resume = getattr(args, "resume", False)
    if resume and not getattr(args, "eval_only", False):
        check_resumable(cfg.OUTPUT_DIR)  # a truncated last checkpoint: refused before config / log are written
    check_weights(cfg, resume)
    check_datasets(list(cfg.DATASETS.TEST))
    if not getattr(args, "eval_only", False):
        check_datasets(list(cfg.DATASETS.TRAIN), mask_format=cfg.INPUT.MASK_FORMAT if cfg.MODEL.MASK_ON else None)
    default_setup(cfg, args)
    return cfg


def check_weights(cfg, resume: bool) -> None:
    """A local ``MODEL.WEIGHTS`` exists and is not a cut-short zip or pickle (URLs and catalog names are Detectron2's
    to fetch), unless ``--resume`` continues from OUTPUT_DIR's own last checkpoint instead."""
    weights = cfg.MODEL.WEIGHTS
    if not weights or "://" in weights:
        return
    if resume and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")):
        return
    check_checkpoint_file(weights, "MODEL.WEIGHTS checkpoint")
    if is_pickle_file(weights):  # a pickle has no directory to check: a truncated one only fails when read
        try:
            load_pickle(weights)
        except CheckpointError as e:
            raise CheckpointError(f"MODEL.WEIGHTS: {e}") from None


def register_datasets(args) -> None:
    register_us3l_datasets()
    for name, json_file, image_root in args.dataset:
        register_coco_json(name, json_file, image_root)


def main(args):
    """Runs in every process that ``launch`` starts."""
    register_datasets(args)
    cfg = setup(args)  # datasets and weights checked there, before anything is written
    trainer_cls = trainer_class(cfg)  # slimmable detectors (us3l.d2.slimmable_backbone) train with sandwich steps
    if args.eval_only:
        model = trainer_cls.build_model(cfg)
        trainer_cls.checkpointer_class(model, save_dir=cfg.OUTPUT_DIR, cfg=cfg).resume_or_load(cfg.MODEL.WEIGHTS,
                                                                                               resume=args.resume)
        return trainer_cls.test(cfg, model)
    trainer = trainer_cls(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def run(argv=None):
    """Command-line entry: parse, then ``launch`` ``main`` on every process."""
    args = argument_parser().parse_args(argv)
    print("Command Line Args:", args)
    if args.cpu_processes:
        from .cpu_launch import launch_cpu

        return launch_cpu(main, args.cpu_processes, args=(args,))
    if args.num_gpus * args.num_machines > 1 and not torch.cuda.is_available():
        raise SystemExit("--num-gpus/--num-machines > 1 need CUDA GPUs: Detectron2's launch starts one NCCL process "
                         "per GPU. On CPU run one process (--num-gpus 1) with a *_cpu.yaml or *_tiny.yaml config, "
                         "or --cpu-processes N for N gloo CPU processes")
    return launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
                  dist_url=args.dist_url, args=(args,))


def cli() -> int:
    """Console script ``us3l-train-net`` (exit codes: :mod:`us3l.cli`)."""
    return run_tool(run)


__all__ = ["US3LTrainer", "argument_parser", "setup", "check_weights", "main", "run", "cli"]
