"""The slimmable detector under Detectron2's LazyConfig (``projects/segmentation/lazy_train_net.py``).

Detectron2's newer projects describe a model as a Python file of ``LazyCall`` objects and train it with its
``tools/lazyconfig_train_net.py`` (``instantiate`` the model, optimizer and loaders; hooks; ``train.*`` keys).
This is that script's twin for the slimmable detector: the config's ``model`` is built from explicit
components (:func:`us3l.d2.slimmable_backbone.slimmable_resnet_fpn`, ``US3LSlimmableRPNHead``,
``US3LSlimmableROIHeads``), and its ``us3l`` node holds what a YAML config keeps under ``MODEL.US3L``:
``sandwich`` (``num_random``, ``distill``, ``distill_weight``, ``seed``), ``width_range``, ``calibration``
(``widths``, ``num_batches``) and ``eval_widths``. Training runs sandwich steps, calibrates BN at the
calibration widths before each evaluation and the final checkpoint, and evaluates at every ``eval_widths``.
"""
from __future__ import annotations

import json
import logging
import os

from detectron2.config import CfgNode, LazyConfig, instantiate
from detectron2.engine import create_ddp_model, default_argument_parser, default_setup, default_writers, hooks, launch
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.solver.build import maybe_add_gradient_clipping
from detectron2.utils import comm

from ..checkpoint.safe_load import check_checkpoint_file
from ..detection.sandwich import SandwichConfig, resolve_seed
from ..output_paths import check_output_dir
from ..width import get_width, set_width
from .evaluation import key_by_width, prepare_for_width, unwrap
from .sandwich import SandwichTrainer, WidthCalibrationHook
from .slimmable_checkpoint import SlimmableDetectorCheckpointer

logger = logging.getLogger("detectron2.us3l.lazy")


def sandwich_config(cfg) -> SandwichConfig:
    s = cfg.us3l.sandwich
    return SandwichConfig(width_range=tuple(cfg.us3l.width_range), num_random=s.num_random, distill=s.distill,
                          distill_weight=s.distill_weight, seed=resolve_seed(s.get("seed", 0)))


def evaluate_widths(cfg, model) -> dict[str, dict]:
    """COCO results at every ``us3l.eval_widths`` (each must be calibrated), keyed ``w0.50/bbox``...; also written
    to ``train.output_dir/inference/widths.json``; the model's width is restored."""
    net = unwrap(model)
    before = get_width(net)
    results = {}
    try:
        for w in cfg.us3l.eval_widths:
            w = prepare_for_width(net, w)
            res = inference_on_dataset(model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator))
            logger.info("width %s:", w)
            print_csv_format(res)
            results.update(key_by_width(w, res or {}))
    finally:
        set_width(net, before)
    if comm.is_main_process():
        path = os.path.join(cfg.train.output_dir, "inference", "widths.json")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(results, f, indent=1)
    return results


def _clipping(cfg) -> CfgNode:
    """``train.clip_gradients`` as the ``SOLVER.CLIP_GRADIENTS`` node Detectron2's clipping reads."""
    c = cfg.train.get("clip_gradients", None) or {}
    return CfgNode({"SOLVER": {"CLIP_GRADIENTS": {
        "ENABLED": bool(c.get("enabled", False)), "CLIP_TYPE": c.get("clip_type", "norm"),
        "CLIP_VALUE": float(c.get("clip_value", 35.0)), "NORM_TYPE": float(c.get("norm_type", 2.0))}}})


def build_model(cfg):
    model = instantiate(cfg.model)
    model.to(cfg.train.device)
    return model


def do_train(cfg, resume: bool = False):
    model = build_model(cfg)
    logger.info("Model:\n%s", model)
    cfg.optimizer.params.model = model
    optimizer = maybe_add_gradient_clipping(_clipping(cfg), instantiate(cfg.optimizer))
    train_loader = instantiate(cfg.dataloader.train)
    model = create_ddp_model(model, **cfg.train.ddp)
    trainer = SandwichTrainer(model, train_loader, optimizer, sandwich_config(cfg), amp=cfg.train.amp.enabled)
    checkpointer = SlimmableDetectorCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    calibration = cfg.us3l.calibration
    trainer.register_hooks([
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        # before the checkpointer and the evaluation: the final checkpoint holds the calibrated statistics
        WidthCalibrationHook(cfg.train.eval_period, model, instantiate(cfg.dataloader.train), calibration.widths,
                             calibration.num_batches),
        hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if comm.is_main_process() else None,
        hooks.EvalHook(cfg.train.eval_period, lambda: evaluate_widths(cfg, model)),
        hooks.PeriodicWriter(default_writers(cfg.train.output_dir, cfg.train.max_iter), period=cfg.train.log_period)
        if comm.is_main_process() else None,
    ])
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    start_iter = trainer.iter + 1 if resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)


def check_before_setup(cfg, args) -> None:
    """The output folder, the checkpoint to start from and the datasets, before ``default_setup`` writes
    ``config.yaml`` and the log into ``train.output_dir`` (a refused run leaves nothing behind)."""
    from .datasets import check_datasets

    check_output_dir(cfg.train.output_dir, "train.output_dir")
    init = cfg.train.get("init_checkpoint", "")
    resuming = args.resume and os.path.isfile(os.path.join(cfg.train.output_dir, "last_checkpoint"))
    if init and "://" not in init and (args.eval_only or not resuming):
        check_checkpoint_file(init, "train.init_checkpoint")
    loaders = ["test"] if args.eval_only else ["test", "train"]
    for loader in loaders:
        names = cfg.dataloader[loader].dataset.get("names", ())
        check_datasets([names] if isinstance(names, str) else list(names))


def main(args):
    cfg = LazyConfig.apply_overrides(LazyConfig.load(args.config_file), args.opts)
    check_before_setup(cfg, args)
    default_setup(cfg, args)
    if args.eval_only:
        model = create_ddp_model(build_model(cfg))
        SlimmableDetectorCheckpointer(model).load(cfg.train.init_checkpoint)
        return evaluate_widths(cfg, model)
    return do_train(cfg, resume=args.resume)


def run(argv=None):
    """``lazy_train_net.py --config-file CFG.py [--eval-only] [--resume] key=value ...``, Detectron2's launch."""
    args = default_argument_parser().parse_args(argv)
    return launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
                  dist_url=args.dist_url, args=(args,))
