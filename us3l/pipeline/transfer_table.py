"""The transfer table: what each pre-training buys a detector, per width, with the backbone frozen and fine-tuned.

Rows (issue 22; the paper's comparison): ``random`` (never trained, the floor), ``simsiam_naive`` (S-Net +
SimSiam, Table 1's collapsing row), ``simsiam_inplace`` (S-Net + inplace distillation), ``us3l``, and
``individual`` (the same recipe trained at ONE width, one network per width, each transferred at its width only).

Stages (each a tool of the project, resumed by :class:`.stages.StageRunner` like the main job):

  1. data: the ``silhouette`` detection set (low-label: few training images; colour says nothing of the class),
     an UNLABELLED pool (``objects`` layout by default: one object per image, as ImageNet precedes COCO), and
     the probe's labelled classification view
  2. per pre-trained row: ``tools/pretrain.py`` on the pool -> ``tools/calibrate_bn.py`` -> framework
     conversion; and ``tools/eval_ssl.py``, the frozen linear / kNN probe per width (random: one backbone per
     seed, ``tools/make_random_backbone.py``)
  3. per (protocol, method, seed): the detector trained (``frozen``: Detectron2 ``MODEL.BACKBONE.FREEZE_AT 5`` /
     MMDetection ``frozen_stages=4``; ``finetune``: everything trained) and evaluated at every width
     (:func:`.commands.detector_stages`; individual rows: the same detector trained at its width only,
     :func:`one_width`)
  4. ``OUT/results.{json,md,csv}``, ``ap_vs_gflops.png`` and the reading (:mod:`.transfer_summary`)
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import List, Optional

from ..output_paths import check_output_dir
from ..width import width_tag
from . import commands as C
from .main_job import add_stage_options, default_jobs, repo_root
from .results_table import load_results
from .stages import StageRunner
from .transfer_reading import METHODS, PROTOCOLS
from .transfer_summary import probe_rows, render_markdown, transfer_rows, write_transfer_table

PRETRAINED = ("simsiam_naive", "simsiam_inplace", "us3l")  # the slimmable SSL rows (one network per row)
# the pre-training recipe every row shares (only method.name / individual width differ): the tiny CPU recipe
# with the outline augmentation, as measured in bench/feature_probe.md
RECIPE = ["method.proj_hidden=512", "method.proj_dim=128", "method.pred_hidden=128", "sampling.num_widths=3",
          "sampling.dynamic=false", "optim.lr=0.5", "optim.schedule=cosine", "train.progress=false"]
DEFAULTS = {"widths": [1.0, 0.75, 0.5, 0.25], "seeds": [0, 1, 2], "num_train": 64, "num_val": 64, "image_size": 96,
            "pool_size": 4096, "pool_image_size": 64, "probe_per_class": 128, "probe_val_per_class": 200,
            "pretrain_iters": 1500, "pretrain_batch": 64, "pretrain_size": 32, "finetune_iters": 170,
            "finetune_epochs": 3, "frozen_iters": 1000, "frozen_epochs": 18, "frozen_lr": 0.02,
            "calib_batches": 4, "calib_batch_size": 64, "probe_epochs": 30,
            "finetune_methods": ["random", "simsiam_naive", "us3l"]}
# --quick: the whole road in minutes (the end-to-end test), not a measurement
QUICK = {"widths": [1.0, 0.5], "seeds": [0, 1], "num_train": 6, "num_val": 4, "image_size": 64, "pool_size": 32,
         "pool_image_size": 32, "probe_per_class": 4, "probe_val_per_class": 4, "pretrain_iters": 2,
         "pretrain_batch": 8, "pretrain_size": 32, "finetune_iters": 2, "finetune_epochs": 1, "frozen_iters": 2,
         "frozen_epochs": 1, "calib_batches": 1,
         "calib_batch_size": 8, "probe_epochs": 1, "finetune_methods": ["random", "us3l"]}
SCALED = ("pretrain_iters", "pool_size", "finetune_iters", "finetune_epochs", "frozen_iters", "frozen_epochs")


def one_width(framework: str, w: float) -> list:
    """Overrides that make the slimmable detector a fixed-width one: trained and calibrated at ``w`` only (the
    sandwich of a one-width range is that width), with the same neck and heads at ``w`` as the slimmable rows,
    so the individual row is compared at equal detector cost."""
    if framework == "d2":
        return ["MODEL.US3L.WIDTH_RANGE", f"[{w:g}, {w:g}]", "MODEL.US3L.WIDTH_MULT", w]
    return [f"model.width_range=[{w:g},{w:g}]"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="transfer_table.sh", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("output", nargs="?", default="runs/transfer", help="output folder (default runs/transfer)")
    p.add_argument("--quick", action="store_true", help="the whole road in minutes: 2 widths, 2 seeds, tiny data")
    p.add_argument("--scale", type=int, default=1,
                   help="multiply pre-training iterations, pool size and detector budget (a GPU user: 10 or more)")
    p.add_argument("--mmdet", action="store_true", help="detectors in MMDetection (default Detectron2)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="pre-training rows")
    p.add_argument("--protocols", nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS))
    p.add_argument("--finetune-methods", nargs="+", choices=METHODS, default=None,
                   help=f"rows also run fine-tuned (default {DEFAULTS['finetune_methods']}: the issue's minimum)")
    p.add_argument("--widths", type=float, nargs="+", help=f"default {DEFAULTS['widths']}")
    p.add_argument("--seeds", type=int, nargs="+", help=f"detector seeds (default {DEFAULTS['seeds']})")
    p.add_argument("--pool-layout", choices=("objects", "scenes"), default="objects")
    for key, what in (("num_train", "labelled detection training images"), ("num_val", "detection val images"),
                      ("image_size", "detection image side"), ("pool_size", "unlabelled pool images"),
                      ("pool_image_size", "pool image side"), ("probe_per_class", "probe training images per class"),
                      ("probe_val_per_class", "probe validation images per class"),
                      ("pretrain_iters", "pre-training iterations"), ("pretrain_batch", "pre-training batch"),
                      ("pretrain_size", "pre-training / probe input side"),
                      ("finetune_iters", "Detectron2 detector iterations"),
                      ("finetune_epochs", "MMDetection detector epochs"),
                      ("frozen_iters", "Detectron2 detector iterations, frozen protocol"),
                      ("frozen_epochs", "MMDetection detector epochs, frozen protocol"),
                      ("calib_batches", "BN calibration batches"),
                      ("calib_batch_size", "BN calibration batch"), ("probe_epochs", "linear-probe epochs")):
        p.add_argument("--" + key.replace("_", "-"), type=int, default=None, help=f"{what} (default {DEFAULTS[key]})")
    p.add_argument("--frozen-lr", type=float, default=None,
                   help=f"detector learning rate, frozen protocol (default {DEFAULTS['frozen_lr']})")
    p.add_argument("--pretrained", nargs="+", default=[], metavar="METHOD=CHECKPOINT",
                   help="skip a row's pre-training and use this checkpoint (e.g. us3l=runs/x/final.pth; individual "
                        "rows: individual@0.5=PATH)")
    p.add_argument("--finetune-opts", nargs="*", default=[],
                   help="extra detector overrides (Detectron2 KEY VALUE pairs / MMDetection key=value)")
    p.add_argument("--arch", choices=("resnet18",), default="resnet18")
    p.add_argument("--num-gpus", type=int, default=0, help="GPUs per run (0: CPU)")
    p.add_argument("--jobs", type=int, default=0, help="runs side by side (default: one per core on a CPU)")
    add_stage_options(p)
    return p


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Explicit options win, then --quick, then the defaults (times --scale for the budgets)."""
    args = build_parser().parse_args(argv)
    check_output_dir(args.output, "OUTPUT")  # first: a refused run leaves nothing behind
    if args.scale < 1:
        raise ValueError("--scale must be >= 1")
    preset = dict(DEFAULTS, **(QUICK if args.quick else {}))
    given = {k for k, v in vars(args).items() if v is not None}
    for k, v in preset.items():
        if k not in given:
            setattr(args, k, v * args.scale if k in SCALED else v)
    args.widths = sorted({float(w) for w in args.widths}, reverse=True)
    args.pretrained = dict(_pretrained_entry(e, args.widths) for e in args.pretrained)
    return args


def _pretrained_entry(entry: str, widths) -> tuple:
    """``us3l=PATH`` -> (("us3l", None), abs PATH); ``individual@0.5=PATH`` -> (("individual", 0.5), ...)."""
    key, sep, path = entry.partition("=")
    method, at, width = key.partition("@")
    if not sep or not path or method not in METHODS or method == "random" or bool(at) != (method == "individual"):
        raise ValueError(f"--pretrained {entry!r}: expected METHOD=CHECKPOINT with METHOD one of "
                         f"{', '.join(PRETRAINED)}, or individual@WIDTH=CHECKPOINT")
    w = None
    if at:
        try:
            w = float(width)
        except ValueError:
            w = None
        if w not in widths:
            raise ValueError(f"--pretrained {entry!r}: width {width} is not one of {widths}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--pretrained {entry!r}: no such file")
    return (method, w), os.path.abspath(path)


def _named(stages, prefix: str):
    for st in stages:
        st.name = f"{prefix}_{st.name}"
    return stages


def main(argv: Optional[List[str]] = None) -> dict:
    """The whole table; bad input (a refused option, OUTPUT not a writable folder) raises before anything is
    written (exit 2 through ``tools/transfer_table.py``)."""
    args = parse_args(argv)
    repo = repo_root()
    framework = "mmdet" if args.mmdet else "d2"
    out = os.path.abspath(args.output)
    os.makedirs(out, exist_ok=True)
    datasets = os.path.join(out, "datasets")
    data_root, pool, cls_root = (os.path.join(datasets, n) for n in ("us3l_shapes", "pool", "probe"))
    env = dict(os.environ, US3L_DATASETS=datasets, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    from us3l.data.synthetic import STYLE_CLASSES

    job = C.Job(py=sys.executable, framework=framework, recipe="slimmable", out=out, data_root=data_root,
                class_names=STYLE_CLASSES["silhouette"], image_size=args.image_size, arch=args.arch,
                widths=args.widths, num_gpus=args.num_gpus, finetune_iters=args.finetune_iters,
                finetune_epochs=args.finetune_epochs, calib_batches=args.calib_batches, latency_runs=0,
                profile_size=args.image_size)
    pipe = StageRunner(out, repo, env, force=args.force, dry_run=args.dry_run, prefix="us3l-transfer")
    py, mk = sys.executable, "tools/make_embedded_dataset.py"
    data = [C.dataset_stage(job, args.num_train, args.num_val, "silhouette", args.seed),
            C.Stage("pool", [py, mk, "--unlabelled", "--root", pool, "--num-train", args.pool_size, "--image-size",
                             args.pool_image_size, "--style", "silhouette", "--pool-layout", args.pool_layout,
                             "--seed", args.seed], [os.path.join(pool, "us3l_dataset.json")]),
            C.Stage("probe_set", [py, mk, "--classification", "--root", cls_root, "--num-train", args.probe_per_class,
                                  "--num-val", args.probe_val_per_class, "--image-size", args.pretrain_size,
                                  "--style", "silhouette", "--seed", args.seed],
                    [os.path.join(cls_root, "us3l_dataset.json")])]

    def probe(name: str, ckpt: str, widths) -> C.Stage:
        dst = os.path.join(out, "probe", f"{name}.json")
        return C.Stage(f"probe_{name}", [py, "tools/eval_ssl.py", ckpt, "--widths", *widths, "--dataset",
                                         "imagefolder", "--data-root", cls_root, "--image-size", args.pretrain_size,
                                         "--recipe", "cifar", "--calib-batches", 4, "--batch-size", 128,
                                         "--probe-epochs", args.probe_epochs, "--output", dst, "--title", name], [dst])

    # ---- pre-training chains (independent of each other): backbone -> calibrated -> converted, and its probe
    backbones, pre_chains, probes = {}, [], {}  # backbones[(method, width or None)] = converted file
    for s in (args.seeds if "random" in args.methods else []):
        rnd = os.path.join(out, "random", f"seed{s}.pth")
        make = [py, "tools/make_random_backbone.py", rnd, "--arch", args.arch, "--seed", s]
        pre_chains.append([C.Stage(f"random_seed{s}", make, [rnd]), probe(f"random_seed{s}", rnd, args.widths)])
        probes.setdefault("random", {})[s] = pre_chains[-1][-1].outputs[0]
    runs = [(m, None) for m in PRETRAINED if m in args.methods]
    runs += [("individual", w) for w in args.widths] if "individual" in args.methods else []
    for method, w in runs:
        name = method if w is None else f"individual_{width_tag(w)}"
        opts = [f"method.name={'us3l' if w is not None else method}", *RECIPE, "train.checkpoint_every=0"]
        opts += [f"model.individual_width={w:g}"] if w is not None else []
        pre = C.pretrain_stage(job, "configs/us3l_tiny_cpu.yaml", args.pretrain_iters, args.pretrain_batch,
                               args.pretrain_size, args.seed, opts, name=f"pretrain_{name}", data_root=pool,
                               augment="outline")
        given = args.pretrained.get((method, w))
        ckpt = given or pre.outputs[0]
        widths = args.widths if w is None else [w]
        cal = C.calibrate_backbone_stage(job, ckpt, args.calib_batches, args.calib_batch_size,
                                         args.pretrain_size, name=f"calibrate_{name}", widths=widths)
        conv = C.convert_stage(job, cal.outputs[0], name=f"convert_{name}")
        pre_chains.append(([] if given else [pre]) + [cal, conv, probe(name, ckpt, widths)])
        backbones[(method, w)] = conv.outputs[0]
        probes.setdefault(method, {})[0 if w is None else w] = pre_chains[-1][-1].outputs[0]

    # ---- detector chains: one per (protocol, method, seed); individual: one fixed-width detector per width
    det_chains, results = [], {}
    for protocol in args.protocols:
        if protocol == "frozen":
            # only the neck and heads learn, from scratch: a longer schedule and twice the LR (measured: at 170
            # iterations of LR 0.01 every row was at box AP 1-3 and within noise; docs/transfer_benchmark.md)
            lr = job.fw.overrides({job.fw.lr_key: args.frozen_lr})
            pjob = dataclasses.replace(job, out=os.path.join(out, protocol), finetune_iters=args.frozen_iters,
                                       finetune_epochs=args.frozen_epochs,
                                       finetune_opts=[*job.fw.frozen_backbone, *lr, *args.finetune_opts])
        else:
            pjob = dataclasses.replace(job, out=os.path.join(out, protocol),
                                       finetune_opts=[*job.fw.trained_backbone, *args.finetune_opts])
        methods = args.methods if protocol == "frozen" else [m for m in args.methods if m in args.finetune_methods]
        for method in methods:
            for s in args.seeds:
                if method == "individual":
                    for w in args.widths:
                        wjob = dataclasses.replace(pjob, widths=[w],
                                                   finetune_opts=[*pjob.finetune_opts, *one_width(framework, w)])
                        init = f"individual_{width_tag(w)}"
                        det_chains.append(_named(C.detector_stages(wjob, init, s, backbones[(method, w)]), protocol))
                        results.setdefault(protocol, {}).setdefault(method, {}).setdefault(s, []).append(
                            os.path.join(pjob.out, init, f"seed{s}"))
                else:
                    det_chains.append(_named(C.detector_stages(pjob, method, s, backbones.get((method, None), "")),
                                             protocol))
                    results.setdefault(protocol, {}).setdefault(method, {})[s] = [
                        os.path.join(pjob.out, method, f"seed{s}")]

    jobs = args.jobs or default_jobs(max(len(pre_chains), len(det_chains)), args.num_gpus)
    total = len(data) + sum(map(len, pre_chains)) + sum(map(len, det_chains)) + 1
    pipe.say(f"transfer table: {args.arch}, {framework}, rows {args.methods}, protocols {args.protocols}, widths "
             f"{args.widths}, seeds {args.seeds}, {args.pretrain_iters} pre-training iterations, output {out}")
    for i, st in enumerate(data, 1):
        pipe.run(st.name, st.cmd, st.outputs, f"[{i}/{total}]")
    # pre-training one run at a time on every core: two side by side ran about ten times slower in sum on 2 cores
    # (docs/transfer_benchmark.md, "Cost"), while the small detectors gain from running side by side
    pipe.run_parallel(pre_chains, 1 if args.num_gpus == 0 else jobs, len(data) + 1, total)
    pipe.run_parallel(det_chains, jobs, len(data) + sum(map(len, pre_chains)) + 1, total)
    if args.dry_run:
        return {}

    rows = transfer_rows({p: {m: {s: [r for d in dirs for r in load_results(d)["rows"]] for s, dirs in by_s.items()}
                              for m, by_s in by_m.items()} for p, by_m in results.items()})
    probe = probe_rows(_probe_runs(probes))
    command = ["bash", "scripts/transfer_table.sh"] + list(argv if argv is not None else sys.argv[1:])
    meta = {"framework": framework, "arch": args.arch, "widths": args.widths, "seeds": args.seeds,
            "methods": args.methods, "protocols": args.protocols, "finetune_methods": args.finetune_methods,
            "pretrained": {f"{m}" + ("" if w is None else f"@{w:g}"): p for (m, w), p in args.pretrained.items()},
            "scale": args.scale, "pretrain": {"iterations": args.pretrain_iters, "batch": args.pretrain_batch,
                                              "input": args.pretrain_size, "seed": args.seed, "recipe": RECIPE},
            "data": {"style": "silhouette", "num_train": args.num_train, "num_val": args.num_val,
                     "image_size": args.image_size, "pool_size": args.pool_size, "pool_layout": args.pool_layout,
                     "pool_image_size": args.pool_image_size},
            "finetune_iters": args.finetune_iters, "frozen_iters": args.frozen_iters, "frozen_lr": args.frozen_lr,
            "jobs": jobs, "stage_seconds": pipe.stage_meta("seconds"),
            "total_seconds": round(time.time() - pipe.t0, 1), "command": command}
    title = f"Transfer by pre-training method: {args.arch} Mask R-CNN ({framework}) on the silhouette benchmark"
    notes = ["AP: COCO AP (pycocotools, 0-100), mean and sample std over the detector seeds listed (one "
             "pre-training per row, seed --seed).",
             "frozen: backbone fixed, neck and heads trained; finetune: the whole slimmable detector trained.",
             "individual: one network pre-trained and transferred per width, evaluated at that width only.",
             "probe: the same backbones, frozen, linear / kNN on the classification view (random: one backbone "
             "per seed; chance 25 %)."]
    paths = write_transfer_table(rows, probe, out, title, meta, notes)
    pipe.say(f"[{total}/{total}] summary: {', '.join(paths.values())}")
    with open(paths["json"]) as f:
        doc = json.load(f)
    print("\n" + render_markdown(doc["rows"], doc["probe"], doc["reading"], title))
    pipe.say(f"done in {meta['total_seconds']:.0f}s: {out}")
    return doc


def _probe_runs(probes: dict) -> dict:
    """``probes[method][seed or width]`` = eval_ssl json -> ``{method: {seed: rows}}`` (individual: its widths'
    rows under one pre-training seed)."""
    runs = {}
    for method, files in probes.items():
        for key, path in files.items():
            with open(path) as f:
                rows = json.load(f)["rows"]
            seed = key if method == "random" else 0
            runs.setdefault(method, {}).setdefault(seed, []).extend(rows)
    return runs

