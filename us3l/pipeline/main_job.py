"""The main job: US3L pre-training -> detectors at many widths -> a table with seeds and a random-init baseline.

Stages (each its own process; its command is printed and logged, see :mod:`.stages`):

  1. tools/make_embedded_dataset.py   the embedded COCO-format set, ``simple`` style (generated, no download)
  2. tools/pretrain.py                US3L pre-training of a slimmable ResNet-18 on the set's images
  3. tools/calibrate_bn.py            backbone BN statistics for every width
  4. tools/convert_pretrain_to_*.py   framework checkpoint
  5. per init (us3l, random) and seed: detector training and evaluation at every width
     (``slimmable``: ONE sandwich-trained detector evaluated at every width; ``per-width``: one detector
     fine-tuned per width), ``tools/eval_widths.py`` -> ``OUT/<init>/seed<s>/results.json``
  6. summary: mean +- std over seeds per (init, width) -> ``OUT/results.{md,csv,json}``, ``ap_vs_gflops.png``

Outputs go to ``runs/main`` (ignored by git). The committed reference results are regenerated on purpose with
``bash scripts/main.sh --output results/main``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import List, Optional

from ..data.paths import checkout_root
from ..frameworks import get_framework
from ..output_paths import check_output_dir
from . import commands as C
from .results_table import load_results
from .stages import StageRunner
from .summary import render_markdown, summarize, write_summary

DEFAULT_WIDTHS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.25)
DEFAULT_SEEDS = (0, 1, 2)
INITS = ("us3l", "random")
# --quick: a pipeline check in a few minutes (the smoke test), not a measurement
QUICK = {"widths": [1.0, 0.5], "seeds": [0, 1], "num_train": 8, "num_val": 4, "image_size": 64,
         "pretrain_iters": 2, "pretrain_batch": 8, "calib_batches": 1, "calib_batch_size": 8, "finetune_iters": 2,
         "finetune_epochs": 1, "latency_runs": 1, "profile_size": 64}


def repo_root() -> str:
    """The checkout holding ``tools/`` and ``projects/`` (the stages are its command-line tools)."""
    root = checkout_root()
    if not os.path.isfile(os.path.join(root, "tools", "pretrain.py")):
        raise SystemExit(f"[us3l-main] the main job runs the repository's tools; none found under {root} "
                         "(install with `pip install -e .` from a checkout)")
    return root


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run_main.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", "--output-dir", dest="output", default="runs/main",
                   help="output folder (default runs/main, ignored by git; results/main is the committed reference)")
    p.add_argument("--quick", action="store_true",
                   help="pipeline check in minutes: 2 widths, 2 seeds, 8 tiny images, 2 iterations per stage")
    p.add_argument("--mmdet", action="store_true", help="train/evaluate with MMDetection (default Detectron2)")
    p.add_argument("--recipe", choices=C.RECIPES + ("auto",), default="auto",
                   help="slimmable: one sandwich-trained detector per seed, evaluated at every width; per-width: "
                        "one detector per width; auto (default): slimmable when its config exists, else per-width")
    p.add_argument("--widths", type=float, nargs="+", default=None, help=f"default {list(DEFAULT_WIDTHS)}")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help=f"detector seeds (default {list(DEFAULT_SEEDS)})")
    p.add_argument("--inits", nargs="+", choices=INITS, default=list(INITS),
                   help="backbone initialisations compared with the same detector recipe and seeds")
    p.add_argument("--datasets", default=None,
                   help="folder for the generated detection set (default OUTPUT/datasets)")
    p.add_argument("--dataset-style", default="simple",
                   help="embedded detection set style (simple | clutter-light | clutter | silhouette: colour-free "
                        "outline classes, the transfer benchmark's, see docs/transfer_benchmark.md)")
    p.add_argument("--num-train", type=int, default=256, help="embedded dataset: training images")
    p.add_argument("--num-val", type=int, default=64, help="embedded dataset: validation images")
    p.add_argument("--image-size", type=int, default=96, help="embedded dataset: image side (also the detector input)")
    p.add_argument("--arch", choices=sorted(C.DEPTHS), default="resnet18", help="slimmable backbone")
    p.add_argument("--pretrain-config", default="configs/us3l_tiny_cpu.yaml")
    p.add_argument("--pretrain-iters", type=int, default=50, help="pre-training iterations")
    p.add_argument("--pretrain-batch", type=int, default=16, help="pre-training batch size")
    p.add_argument("--pretrain-size", type=int, default=64, help="pre-training / calibration crop size")
    p.add_argument("--pretrain-opts", nargs="*", default=[], help="extra key=value overrides for tools/pretrain.py")
    p.add_argument("--pretrained", default=None,
                   help="skip pre-training: start from this checkpoint (us3l.pretrain/1, us3l.backbone/1, ...)")
    p.add_argument("--calib-batches", type=int, default=4, help="BN calibration batches per width")
    p.add_argument("--calib-batch-size", type=int, default=64)
    p.add_argument("--detector-config", default=None, help="detector config (default: the recipe's tiny Mask R-CNN)")
    p.add_argument("--finetune-iters", type=int, default=170, help="Detectron2: detector training iterations")
    p.add_argument("--finetune-epochs", type=int, default=3,
                   help="MMDetection: detector training epochs (64 iterations each at the defaults)")
    p.add_argument("--sandwich-random-widths", type=int, default=1,
                   help="slimmable recipe: random widths per iteration besides the max and the min")
    p.add_argument("--finetune-opts", nargs="*", default=[],
                   help="extra detector overrides (Detectron2 KEY VALUE pairs / MMDetection key=value)")
    p.add_argument("--num-gpus", type=int, default=0, help="GPUs per training / evaluation run (0: CPU)")
    p.add_argument("--jobs", type=int, default=0,
                   help="detector runs (init x seed) side by side, the cores shared out among them "
                        "(default 0: one per core, up to the number of runs, on a CPU; 1 with --num-gpus)")
    p.add_argument("--latency-runs", type=int, default=0,
                   help="timed CPU forward passes per width (default 0: skip; runs side by side would distort "
                        "them, see bench/slimmable_detector.md for latency)")
    p.add_argument("--profile-size", type=int, default=224, help="input side for backbone GFLOPs/latency")
    p.add_argument("--demo-images", type=int, default=3,
                   help="slimmable recipe: val images drawn at every width into OUTPUT/demo.png by tools/demo.py "
                        "(the first init's first seed; 0: no demo)")
    add_stage_options(p)
    return p


def add_stage_options(p: argparse.ArgumentParser) -> None:
    """The options every staged job shares: its data / pre-training seed, --force and --dry-run."""
    p.add_argument("--seed", type=int, default=0, help="seed of the dataset and the pre-training")
    p.add_argument("--force", action="store_true", help="rerun stages that finished before")
    p.add_argument("--dry-run", action="store_true", help="print the stage commands only")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Parse, then fill what was left unset from --quick or the defaults (an explicit option always wins)."""
    p = build_parser()
    args = p.parse_args(argv)
    given = {a.dest for a in p._actions if any(o in (argv if argv is not None else sys.argv[1:])
                                                for o in a.option_strings)}
    if args.quick:
        for k, v in QUICK.items():
            if k not in given:
                setattr(args, k, v)
    args.widths = sorted({float(w) for w in (args.widths or DEFAULT_WIDTHS)}, reverse=True)
    args.seeds = list(args.seeds if args.seeds is not None else DEFAULT_SEEDS)
    return args


def default_jobs(num_runs: int, num_gpus: int) -> int:
    """Detector runs side by side: one per core on a CPU (see StageRunner.run_parallel), one at a time on GPUs."""
    return 1 if num_gpus > 0 else max(1, min(num_runs, os.cpu_count() or 1))


def resolve_recipe(recipe: str, framework: str, repo: str) -> str:
    if recipe != "auto":
        return recipe
    slimmable = get_framework(framework).configs["slimmable"]
    return "slimmable" if os.path.isfile(os.path.join(repo, slimmable)) else "per-width"


def check_inputs(args: argparse.Namespace, repo: str) -> None:
    """The output folders and the files the stages will read, before anything is written: a refused job (exit 2,
    :mod:`us3l.cli`) leaves no stages.json, logs or dataset behind."""
    from us3l.data.synthetic import STYLE_CLASSES

    check_output_dir(args.output, "--output")
    if args.datasets:
        check_output_dir(args.datasets, "--datasets")
    if args.dataset_style not in STYLE_CLASSES:
        raise ValueError(f"unknown --dataset-style {args.dataset_style!r}; choose from {sorted(STYLE_CLASSES)}")
    pretrain_config = os.path.join(repo, args.pretrain_config)  # stages run in the checkout (an absolute path stays)
    pretraining = "us3l" in args.inits and not args.pretrained
    given = [("--pretrained", args.pretrained if "us3l" in args.inits else None),
             ("--pretrain-config", pretrain_config if pretraining else None),
             ("--detector-config", args.detector_config)]
    for option, path in given:
        if path and not os.path.isfile(path):
            raise FileNotFoundError(f"{option} {path}: no such file")


def main(argv: Optional[List[str]] = None) -> dict:
    args = parse_args(argv)
    repo = repo_root()
    check_inputs(args, repo)
    from us3l.data.synthetic import STYLE_CLASSES

    framework = "mmdet" if args.mmdet else "d2"
    out = os.path.abspath(args.output)
    os.makedirs(out, exist_ok=True)
    datasets = os.path.abspath(args.datasets or os.path.join(out, "datasets"))
    data_root = os.path.join(datasets, "us3l_shapes")  # where both frameworks' tiny configs look for the set
    env = dict(os.environ, US3L_DATASETS=datasets, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    recipe = resolve_recipe(args.recipe, framework, repo)
    job = C.Job(py=sys.executable, framework=framework, recipe=recipe, out=out, data_root=data_root,
                class_names=STYLE_CLASSES[args.dataset_style], image_size=args.image_size, arch=args.arch,
                widths=args.widths, num_gpus=args.num_gpus, finetune_iters=args.finetune_iters,
                finetune_epochs=args.finetune_epochs, finetune_opts=args.finetune_opts,
                detector_config=os.path.abspath(args.detector_config) if args.detector_config else None,
                sandwich_random_widths=args.sandwich_random_widths, calib_batches=args.calib_batches,
                profile_size=args.profile_size, latency_runs=args.latency_runs)
    pipe = StageRunner(out, repo, env, force=args.force, dry_run=args.dry_run)

    stages = [C.dataset_stage(job, args.num_train, args.num_val, args.dataset_style, args.seed)]
    backbone = ""
    if "us3l" in args.inits:
        if args.pretrained:
            pretrained = os.path.abspath(args.pretrained)
        else:
            stages.append(C.pretrain_stage(job, args.pretrain_config, args.pretrain_iters, args.pretrain_batch,
                                           args.pretrain_size, args.seed, args.pretrain_opts))
            pretrained = stages[-1].outputs[0]
        stages.append(C.calibrate_backbone_stage(job, pretrained, args.calib_batches, args.calib_batch_size,
                                                 args.pretrain_size))
        stages.append(C.convert_stage(job, stages[-1].outputs[0]))
        backbone = stages[-1].outputs[0]
    chains = [C.detector_stages(job, init, seed, backbone if init == "us3l" else "")
              for init in args.inits for seed in args.seeds]
    jobs = args.jobs or default_jobs(len(chains), args.num_gpus)
    demo = (C.demo_stages(job, args.inits[0], args.seeds[0], min(args.demo_images, args.num_val))
            if args.demo_images > 0 else [])
    total = len(stages) + sum(len(c) for c in chains) + len(demo) + 1

    pipe.say(f"main job: {args.arch}, {framework}, {recipe} detector, widths {args.widths}, seeds {args.seeds}, "
             f"inits {args.inits}, {args.dataset_style} set, output {out}")
    for i, st in enumerate(stages, 1):
        pipe.run(st.name, st.cmd, st.outputs, f"[{i}/{total}]")
    pipe.run_parallel(chains, jobs, len(stages) + 1, total, lead=args.num_gpus == 0)
    done = len(stages) + sum(len(c) for c in chains)
    for i, st in enumerate(demo, done + 1):  # after every training: its latencies are measured alone
        pipe.run(st.name, st.cmd, st.outputs, f"[{i}/{total}]")
    if args.dry_run:
        return {}

    runs = {init: {seed: load_results(os.path.join(out, init, f"seed{seed}"))["rows"] for seed in args.seeds}
            for init in args.inits}
    rows = summarize(runs)
    command = ["bash", "scripts/main.sh"] + list(argv if argv is not None else sys.argv[1:])
    meta = {"framework": framework, "recipe": recipe, "arch": args.arch, "widths": args.widths, "seeds": args.seeds,
            "inits": args.inits, "dataset": {"style": args.dataset_style, "num_train": args.num_train,
                                             "num_val": args.num_val, "image_size": args.image_size},
            "finetune_iters": args.finetune_iters, "pretrain_iters": args.pretrain_iters, "jobs": jobs,
            "stage_seconds": pipe.stage_meta("seconds"), "stage_cpu_seconds": pipe.stage_meta("cpu_seconds"),
            "stage_threads": pipe.stage_meta("threads"),
            "total_seconds": round(time.time() - pipe.t0, 1), "command": command}
    title = f"US3L {args.arch} Mask R-CNN ({framework}, {recipe}) on the embedded {args.dataset_style} set"
    notes = ["AP: COCO AP (pycocotools, 0-100), mean and sample std over the seeds listed; the seed sets the detector "
             "training (pre-training and dataset use --seed).",
             "detector GFLOPs: whole detector (fvcore) at the width; backbone GFLOPs: the trunk alone.",
             "random: the same detector recipe and seeds with a randomly initialised backbone."]
    paths = write_summary(rows, out, title, meta, notes)
    pipe.say(f"[{total}/{total}] summary: {', '.join(paths.values())}")
    with open(paths["json"]) as f:
        doc = json.load(f)
    print("\n" + render_markdown(doc["rows"], title))
    pipe.say(f"done in {meta['total_seconds']:.0f}s: {out}")
    return doc

