"""Training / evaluation entry point shared by ``projects/detection`` and ``projects/segmentation``.

``get_cfg -> add_us3l_config -> merge_from_file -> merge_from_list -> freeze -> default_setup``, then
Detectron2's ``launch`` (``--num-gpus``/``--num-machines``/``--dist-url``). The trainer is Detectron2's
``DefaultTrainer`` with three changes: the checkpointer is :class:`US3LCheckpointer` (never a silently
skipped tensor), the evaluator is pycocotools COCO evaluation (``TEST.IMS_PER_BATCH`` images per batch), and
results are keyed by the width.
"""
from __future__ import annotations

import weakref
from collections import OrderedDict

import torch
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch

from ..cli import run_tool
from .checkpoint import US3LCheckpointer
from .config import calibration_widths_checked, load_config, us3l_width
from .datasets import check_datasets, register_coco_json, register_us3l_datasets
from .evaluation import build_coco_evaluator, build_test_loader, key_by_width, save_width_metrics


class US3LTrainer(DefaultTrainer):
    """``DefaultTrainer`` with the US3L checkpointer and per-width COCO evaluation."""

    def build_hooks(self):
        # DefaultTrainer.__init__ creates its checkpointer just before building hooks: swap it in here so the
        # periodic checkpointer and resume_or_load both use ours.
        self.checkpointer = US3LCheckpointer(self._trainer.model, self.cfg.OUTPUT_DIR, cfg=self.cfg,
                                             trainer=weakref.proxy(self))
        return super().build_hooks()

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_coco_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        results = super().test(cfg, model, evaluators)
        if len(cfg.DATASETS.TEST) == 1:
            results = {cfg.DATASETS.TEST[0]: results}
        width = us3l_width(cfg)
        keyed = OrderedDict()
        for name, res in results.items():
            if res:
                save_width_metrics(cfg, name, res)
            keyed[name] = key_by_width(width, res or {})
        return keyed[cfg.DATASETS.TEST[0]] if len(keyed) == 1 else keyed


def argument_parser():
    parser = default_argument_parser()
    parser.add_argument("--cpu-processes", type=int, default=0, metavar="N",
                        help="train with N CPU processes (gloo) instead of --num-gpus GPU processes: distributed "
                             "code paths without GPUs (use a config with plain BN and MODEL.DEVICE cpu)")
    parser.add_argument("--dataset", nargs=3, action="append", default=[], metavar=("NAME", "JSON", "IMAGE_ROOT"),
                        help="register a COCO-format instance set under NAME (repeatable)")
    return parser


def setup(args):
    cfg = load_config(args.config_file, args.opts)
    cfg.freeze()
    us3l_width(cfg)  # a bad width fails here, before any data is read
    calibration_widths_checked(cfg)  # and so does a bad calibration width (it would fail after the training)
    default_setup(cfg, args)
    return cfg


def register_datasets(args) -> None:
    register_us3l_datasets()
    for name, json_file, image_root in args.dataset:
        register_coco_json(name, json_file, image_root)


def main(args):
    """Runs in every process that ``launch`` starts."""
    register_datasets(args)
    cfg = setup(args)
    check_datasets(list(cfg.DATASETS.TEST) + ([] if args.eval_only else list(cfg.DATASETS.TRAIN)))
    from .sandwich import trainer_class  # slimmable detectors (us3l.d2.slimmable) train with sandwich steps

    trainer_cls = trainer_class(cfg)
    if args.eval_only:
        model = trainer_cls.build_model(cfg)
        checkpointer_cls = getattr(trainer_cls, "checkpointer_class", US3LCheckpointer)
        checkpointer_cls(model, save_dir=cfg.OUTPUT_DIR, cfg=cfg).resume_or_load(cfg.MODEL.WEIGHTS,
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


__all__ = ["US3LTrainer", "argument_parser", "setup", "main", "run", "cli"]
