"""Every command the main job runs, in one place: dataset, pre-training, BN calibration, conversion, and the
detector recipes (train + evaluate at many widths) for Detectron2 and MMDetection.

Two detector recipes:

- ``slimmable``: ONE universally slimmable detector per (init, seed), sandwich-trained with the framework's
  own trainer, BN calibrated per width, evaluated at every width from that one checkpoint;
- ``per-width``: the older protocol, one ordinary detector fine-tuned per width (cost grows with the
  number of widths).

The stage list of a recipe is data (name, command, outputs), so a recipe can change without touching the
runner (:mod:`.main_job`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

from ..frameworks import Framework, get_framework
from ..width import width_tag, width_text
from .results_table import load_results

DEPTHS = {"resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101}
RECIPES = ("slimmable", "per-width")


@dataclass
class Stage:
    name: str
    cmd: List
    outputs: List[str]
    report: Optional[Callable[[], str]] = None  # a console line once the stage has run (its result, in short)


@dataclass
class Job:
    """What one main-job run needs to build its commands (paths are absolute)."""
    py: str
    framework: str                  # d2 | mmdet
    recipe: str                     # slimmable | per-width
    out: str                        # output folder
    data_root: str                  # the detection set (COCO layout)
    class_names: Sequence[str]
    image_size: int
    arch: str = "resnet18"
    widths: Sequence[float] = (1.0, 0.5)
    num_gpus: int = 0
    finetune_iters: int = 300
    finetune_epochs: int = 1
    finetune_opts: Sequence[str] = ()
    detector_config: Optional[str] = None
    sandwich_random_widths: int = 1
    calib_batches: int = 4
    profile_size: int = 224
    latency_runs: int = 10
    extra: dict = field(default_factory=dict)

    @property
    def fw(self) -> Framework:
        return get_framework(self.framework)

    @property
    def config(self) -> str:
        return self.detector_config or self.fw.configs[self.recipe]


# ------------------------------------------------------------------------------------------ data / backbone
def dataset_stage(job: Job, num_train: int, num_val: int, style: str, seed: int = 0) -> Stage:
    return Stage("dataset", [job.py, "tools/make_embedded_dataset.py", "--root", job.data_root, "--num-train",
                             num_train, "--num-val", num_val, "--image-size", job.image_size, "--style", style,
                             "--seed", seed],
                 [os.path.join(job.data_root, "annotations", "instances_val.json")])


def pretrain_stage(job: Job, config: str, iters: int, batch: int, size: int, seed: int, opts: Sequence[str],
                   name: str = "pretrain", data_root: Optional[str] = None, augment: str = "imagenet") -> Stage:
    """``tools/pretrain.py`` on ``data_root`` (default: the detection set's images) into ``OUT/<name>``."""
    pre_dir = os.path.join(job.out, name)
    overrides = [f"model.arch={job.arch}", "model.cifar_stem=false", "data.dataset=images",
                 f"data.root={data_root or job.data_root}", f"data.augment={augment}", f"data.image_size={size}",
                 f"data.batch_size={batch}", f"train.iterations={iters}", f"train.seed={seed}",
                 "train.device=cpu" if job.num_gpus == 0 else "train.device=auto",
                 f"train.log_every={max(1, min(10, iters // 10))}"]
    return Stage(name, [job.py, "tools/pretrain.py", "--config", config, "--output-dir", pre_dir,
                        *overrides, *opts], [os.path.join(pre_dir, "final.pth")])


def calibrate_backbone_stage(job: Job, pretrained: str, batches: int, batch_size: int, size: int,
                             name: str = "calibrate_bn", widths: Optional[Sequence[float]] = None) -> Stage:
    """Backbone BN statistics per width (default: the job's widths) on the detection set's training images."""
    calibrated = os.path.join(job.out, "backbone_calibrated.pth" if name == "calibrate_bn" else f"{name}.pth")
    return Stage(name, [job.py, "tools/calibrate_bn.py", pretrained, calibrated, "--widths",
                        *(widths or job.widths), "--data-root", job.data_root, "--num-batches", batches,
                        "--batch-size", batch_size, "--image-size", size, "--recipe", "imagenet"], [calibrated])


def convert_stage(job: Job, calibrated: str, name: str = "convert") -> Stage:
    converted = os.path.join(job.out, job.fw.converted_file if name == "convert" else
                             f"{name}_{job.fw.converted_file}")
    return Stage(name, [job.py, job.fw.convert_tool, calibrated, converted], [converted])


# ------------------------------------------------------------------------------------------------ detector
def dataset_opts(job: Job) -> list:
    """Overrides that point the tiny detector configs at this job's dataset (classes, input size, backbone)."""
    depth = DEPTHS[job.arch]
    n = len(job.class_names)
    if job.framework == "d2":
        return ["MODEL.RESNETS.DEPTH", depth, *(["MODEL.RESNETS.RES2_OUT_CHANNELS", 64] if depth < 50 else []),
                "MODEL.ROI_HEADS.NUM_CLASSES", n, "INPUT.MIN_SIZE_TRAIN", f"({job.image_size},)",
                "INPUT.MIN_SIZE_TEST", job.image_size]
    classes = "[" + ",".join(job.class_names) + "]"  # mmengine's DictAction: an unquoted list of strings
    # the slimmable configs have no validation loader (BN statistics exist per width only after calibration)
    splits = ("train", "test") if job.recipe == "slimmable" else ("train", "val", "test")
    # the slimmable FPN takes the full-width channels of the backbone (per-width configs: mmdet_train --width)
    from ..models.resnet import stage_channels  # torch: imported only when an MMDetection job is built

    full = stage_channels(depth)
    neck = [f"model.neck.in_channels=[{','.join(map(str, full))}]"] if job.recipe == "slimmable" else []
    return [f"model.backbone.depth={depth}", *neck, f"model.roi_head.bbox_head.num_classes={n}",
            f"model.roi_head.mask_head.num_classes={n}",
            *(f"{split}_dataloader.dataset.metainfo.classes={classes}" for split in splits)]


def _d2_train(job: Job, weights: str, out_dir: str, seed: int, width_opts: list) -> list:
    it = job.finetune_iters
    cmd = [job.py, job.fw.train_script, "--config-file", job.config,
           "--num-gpus", max(1, job.num_gpus), "OUTPUT_DIR", out_dir, "MODEL.WEIGHTS", weights, *width_opts,
           "SEED", seed, "SOLVER.MAX_ITER", it,
           # the learning-rate drop at 80% of whatever budget was asked for (must precede MAX_ITER)
           "SOLVER.STEPS", f"({int(0.8 * it)},)" if it >= 2 else "()",
           "SOLVER.CHECKPOINT_PERIOD", max(it, 1),
           # evaluation is a later stage's job: no test set while training
           "DATASETS.TEST", "()", *dataset_opts(job)]
    if job.num_gpus == 0:
        cmd += ["MODEL.DEVICE", "cpu"]
    return cmd + list(job.finetune_opts)


def _mmdet_train(job: Job, weights: str, out_dir: str, seed: int, width_args: list, cfg_opts: Sequence = ()) -> list:
    opts = [f"randomness.seed={seed}", f"train_cfg.max_epochs={job.finetune_epochs}", "train_cfg.val_begin=1000000",
            *dataset_opts(job), *cfg_opts, *job.finetune_opts]
    if weights:
        opts.insert(0, f"model.backbone.init_cfg.checkpoint={weights}")
    else:  # random init: no pretrained checkpoint for the backbone
        opts.insert(0, "model.backbone.init_cfg=None")
    cmd = [job.py, job.fw.train_script, job.config, *width_args, "--work-dir", out_dir,
           "--cfg-options", *opts]
    if job.num_gpus > 1:
        cmd = [job.py, "-m", "torch.distributed.run", f"--nproc_per_node={job.num_gpus}", *cmd[1:],
               "--launcher", "pytorch"]
    return cmd


def _finished(job: Job, out_dir: str) -> str:
    """The file whose existence says a training run finished."""
    return os.path.join(out_dir, job.fw.final_checkpoint)


def _slimmable_checkpoint(job: Job, train_dir: str) -> str:
    """The ONE checkpoint of every width a slimmable training run leaves (mmengine: the last epoch's)."""
    return _finished(job, train_dir) if job.framework == "d2" else os.path.join(
        train_dir, f"epoch_{job.finetune_epochs}.pth")


def _eval(job: Job, weights: str, out_dir: str, title: str, extra: Sequence = ()) -> Stage:
    cmd = [job.py, "tools/eval_widths.py", weights, "--widths", *job.widths, "--framework", job.framework,
           "--config", job.config, "--output-dir", out_dir, "--arch", job.arch, "--profile-size", job.profile_size,
           "--latency-runs", job.latency_runs, "--num-gpus", job.num_gpus, *extra, "--title", title,
           "--opts", *dataset_opts(job)]
    return Stage("", cmd, [os.path.join(out_dir, "results.json")], report=lambda: eval_report(out_dir))


def demo_stages(job: Job, init: str, seed: int, num_images: int = 3) -> List[Stage]:
    """The README's picture: the first val images through ONE slimmable detector at every width of the job
    (``tools/demo.py``: boxes, masks and classes drawn by the framework's visualizer, each panel titled with its
    latency and GFLOPs) into ``OUT/demo.png``. MMDetection's training calibrates no width, so its checkpoint is
    calibrated first (``tools/calibrate_detector.py``, the evaluation's batches)."""
    if job.recipe != "slimmable":
        return []
    tdir = os.path.join(job.out, init, f"seed{seed}", "train")
    opts = dataset_opts(job)
    stages = []
    ckpt = _slimmable_checkpoint(job, tdir)  # Detectron2: calibrated at the job's widths by the training run
    if job.framework == "mmdet":
        trained, ckpt = ckpt, os.path.join(job.out, init, f"seed{seed}", "demo_calibrated.pth")
        stages.append(Stage(f"{init}_seed{seed}_demo_calibrate", [
            job.py, "tools/calibrate_detector.py", trained, ckpt,
            "--config", job.config, "--widths", *job.widths, "--num-batches", job.calib_batches, "--opts", *opts],
            [ckpt]))
    from ..data.synthetic.writers import detection_file_name  # numpy / PIL: only when a demo is planned

    images = [os.path.join(job.data_root, "val", detection_file_name(i)) for i in range(1, num_images + 1)]
    grid = os.path.join(job.out, "demo.png")
    stages.append(Stage("demo", [job.py, "tools/demo.py", ckpt, *images, "--config", job.config, "--widths",
                                 *job.widths, "--output", grid, "--runs", 3, "--title",
                                 f"{init} init, seed {seed}: one checkpoint at every width", "--opts", *opts],
                        [grid]))
    return stages


def eval_report(out_dir: str) -> str:
    """One console line per evaluation, so the first result shows where the job is watched: box AP at the
    widest and the narrowest width, and the table's path."""
    rows = sorted(load_results(out_dir)["rows"], key=lambda r: -r["width"])
    ap = [("n/a" if r.get("box_AP") is None else f"{r['box_AP']:.1f}") + f" at {width_text(r['width'])}x"
          for r in (rows[0], rows[-1])]
    return f"box AP {ap[0]} ... {ap[1]}; table: {os.path.join(out_dir, 'results.md')}"


def detector_stages(job: Job, init: str, seed: int, weights: str) -> List[Stage]:
    """Train the detector(s) of one (init, seed) and evaluate them at every width of the job.

    ``weights``: the converted backbone ('' for a randomly initialised backbone). Each stage name is unique
    within the job; the evaluation writes ``OUT/<init>/seed<seed>/results.json``.
    """
    run_dir = os.path.join(job.out, init, f"seed{seed}")
    title = f"{init} init, seed {seed}: {job.arch} Mask R-CNN ({job.framework}, {job.recipe})"
    stages = []
    if job.recipe == "per-width":
        for w in job.widths:
            wdir = os.path.join(run_dir, "finetune", width_tag(w))
            cmd = (_d2_train(job, weights, wdir, seed, ["MODEL.US3L.WIDTH_MULT", w]) if job.framework == "d2"
                   else _mmdet_train(job, weights, wdir, seed, ["--width", w]))
            stages.append(Stage(f"{init}_seed{seed}_train_{width_tag(w)}", cmd, [_finished(job, wdir)]))
        ev = _eval(job, os.path.join(run_dir, "finetune", "w{width}"), run_dir, title)
    else:
        tdir = os.path.join(run_dir, "train")
        widths = "[" + ", ".join(f"{w:g}" for w in job.widths) + "]"
        # sandwich rule; BN statistics of every evaluated width calibrated on training images after training
        cmd = (_d2_train(job, weights, tdir, seed, [
            "MODEL.US3L.SANDWICH.NUM_RANDOM", job.sandwich_random_widths,
            "MODEL.US3L.CALIBRATION.WIDTHS", widths, "MODEL.US3L.CALIBRATION.NUM_BATCHES", job.calib_batches])
               if job.framework == "d2" else _mmdet_train(job, weights, tdir, seed, [], [
                   f"model.sandwich.num_random={job.sandwich_random_widths}"]))
        stages.append(Stage(f"{init}_seed{seed}_train", cmd, [_finished(job, tdir)]))
        ckpt = _slimmable_checkpoint(job, tdir)
        # widths the training run did not calibrate (mmdet) are calibrated here, on training images
        ev = _eval(job, ckpt, run_dir, title, ["--calibrate-batches", job.calib_batches])
    ev.name = f"{init}_seed{seed}_evaluate"
    stages.append(ev)
    return stages
