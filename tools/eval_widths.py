#!/usr/bin/env python
"""Per-width COCO table of one slimmable detector: box/mask AP, backbone GFLOPs, parameters, CPU latency.

ONE universally slimmable detector (a ``*_slimmable_*`` config, :mod:`us3l.d2.slimmable_backbone`): one checkpoint
evaluated in this process at every width, with a ``detector_gflops`` column (whole detector, fvcore, one test
image) next to the backbone's, and the plot against it::

    python tools/eval_widths.py model_final.pth --widths 1.0 0.9 0.75 0.5 0.25 \
        --config projects/segmentation/configs/mask_rcnn_US-R50_FPN_slimmable_tiny.yaml --output-dir OUT

A width without calibrated BN statistics is refused, unless ``--calibrate-batches N`` calibrates it first on
N training batches (the calibrated checkpoint is written to ``OUT/model_calibrated.pth``).

Per-width detectors (any other config):

Evaluates detector weights at each width with the framework's own test entry point (Detectron2
``projects/segmentation/train_net.py --eval-only``, or MMDetection ``projects/segmentation/mmdet_test.py``),
one process per width, then profiles the backbone at that width (``us3l.profiling``) and writes
``results.{json,csv,md}``, ``metrics.json`` (flat, ``w0.50/bbox_AP`` keys) and ``ap_vs_gflops.png``.

WEIGHTS is either one file used at every width (a checkpoint the width-aware loader slices, e.g. a converted
backbone), or a template holding ``{width}``, replaced by the width as its tag writes it (:func:`us3l.width.width_text`:
two decimals, three when needed; ``runs/w{width}/model_final.pth`` -> ``runs/w0.50/...``, ``runs/w0.375/...``):
the usual case, one fine-tuned detector per width.

Your own COCO-format set instead of the config's test set: ``--dataset NAME JSON IMAGE_ROOT`` (both frameworks,
both modes; checked before anything runs).

Real COCO on GPUs: ``--config projects/segmentation/configs/mask_rcnn_US-R50_FPN_1x.yaml --num-gpus 8`` (its test
set is ``coco_2017_val`` under ``$DETECTRON2_DATASETS``); ``--opts`` passes anything else to the test entry point.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shlex
import shutil
import sys
import time

from us3l.cli import exit_with
from us3l.errors import BAD_INPUT_ERRORS
from us3l.frameworks import DETECTRON2, FRAMEWORKS, MMDETECTION, get_framework
from us3l.output_paths import check_output_dir
from us3l.pipeline.live_log import tee_process
from us3l.pipeline.results_table import render_markdown, write_results
from us3l.width import width_tag, width_text

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

def weights_for(template: str, w: float) -> str:
    """``template`` with ``{width}`` replaced by the width as its tag writes it (``0.50``, ``0.375``)."""
    return template.replace("{width}", width_text(w))


# ------------------------------------------------------------------------------------------ Detectron2
def d2_eval_command(py, config, weights, out_dir, width, num_gpus, opts, dataset=None) -> list:
    cmd = [py, DETECTRON2.test_script, "--eval-only", *(["--dataset", *dataset] if dataset else []),
           "--config-file", config,
           "--num-gpus", str(max(1, num_gpus)), "OUTPUT_DIR", out_dir, "MODEL.WEIGHTS", weights,
           "MODEL.US3L.WIDTH_MULT", str(width)]
    if num_gpus == 0:
        cmd += ["MODEL.DEVICE", "cpu"]
    return cmd + list(opts)


def d2_read_metrics(out_dir: str, width: float) -> dict:
    """The ``metrics_<dataset>_w<width>.json`` that ``us3l.d2`` evaluation writes (first test dataset)."""
    files = sorted(glob.glob(os.path.join(out_dir, "metrics_*.json")), key=os.path.getmtime)
    records = []
    for path in files:
        with open(path) as f:
            rec = json.load(f)
        if abs(float(rec.get("width", -1)) - width) < 1e-6:
            records.append(rec)
    if not records:
        raise FileNotFoundError(f"no metrics_*.json for width {width} in {out_dir} (did the evaluation run?)")
    rec = records[-1]
    return {"box_AP": rec.get("bbox", {}).get("AP"), "mask_AP": rec.get("segm", {}).get("AP"),
            "box_AP50": rec.get("bbox", {}).get("AP50"), "mask_AP50": rec.get("segm", {}).get("AP50"),
            "arch": rec.get("arch"), "dataset": rec.get("dataset")}


def d2_arch(config: str) -> str:
    """``resnet<MODEL.RESNETS.DEPTH>`` read from the YAML and its ``_BASE_`` chain (no Detectron2 import)."""
    import yaml

    depth, path = None, os.path.abspath(config)
    while path and depth is None:
        with open(path) as f:
            cfg = yaml.safe_load(f) or {}
        depth = ((cfg.get("MODEL") or {}).get("RESNETS") or {}).get("DEPTH")
        base = cfg.get("_BASE_")
        path = os.path.join(os.path.dirname(path), base) if base else None
    return f"resnet{depth or 50}"


# ----------------------------------------------------------------------------------------- MMDetection
def mmdet_eval_command(py, config, weights, out_dir, width, num_gpus, opts, dataset=None) -> list:
    cmd = [py, MMDETECTION.test_script, config, weights, "--width", str(width), "--work-dir", out_dir]
    if opts:
        cmd += ["--cfg-options", *opts]
    if num_gpus > 1:
        cmd = [py, "-m", "torch.distributed.run", f"--nproc_per_node={num_gpus}", *cmd[1:], "--launcher", "pytorch"]
    return cmd


def mmdet_read_metrics(out_dir: str, width: float) -> dict:
    """The last test record of ``metrics_w<width>.json`` (``us3l.mmdet.hooks.WidthMetricsHook``), 0-1 -> 0-100."""
    for path in sorted(glob.glob(os.path.join(out_dir, "metrics_w*.json")), key=os.path.getmtime, reverse=True):
        with open(path) as f:
            records = json.load(f)
        for rec in reversed(records):
            if rec.get("mode") == "test" and abs(float(rec.get("width", -1)) - width) < 1e-6:
                m = {k.split("/", 1)[-1]: v for k, v in rec["metrics"].items()}

                def pct(key, m=m):
                    v = m.get(key)
                    return None if not isinstance(v, (int, float)) or v < 0 else 100.0 * float(v)
                return {"box_AP": pct("bbox_mAP"), "mask_AP": pct("segm_mAP"),
                        "box_AP50": pct("bbox_mAP_50"), "mask_AP50": pct("segm_mAP_50")}
    raise FileNotFoundError(f"no test metrics for width {width} in {out_dir}/metrics_w*.json")


def mmdet_arch(config: str) -> str:
    from mmengine.config import Config

    bb = Config.fromfile(config).model.backbone
    return f"resnet{bb.get('depth', 50)}"


def resolve_weights(path: str, framework: str) -> str:
    """A run folder stands for its final checkpoint (:meth:`us3l.frameworks.Framework.run_weights`)."""
    return get_framework(framework).run_weights(path) if os.path.isdir(path) else path


# what this tool runs and reads per framework (the facts themselves: us3l.frameworks)
PER_WIDTH = {
    "d2": (d2_eval_command, d2_read_metrics, d2_arch),
    "mmdet": (mmdet_eval_command, mmdet_read_metrics, mmdet_arch),
}


def dataset_opts(framework: str, dataset) -> list[str]:
    """``--dataset NAME JSON IMAGE_ROOT`` as the framework's test-set overrides, the set checked first (a bad set is
    one error line, exit 2, before any evaluation). Detectron2 registers NAME (the per-width entry point gets
    ``--dataset`` too); MMDetection reads the file and its category names directly."""
    from us3l.data.datasets import check_coco_instances

    name, json_file, image_root = dataset[0], os.path.abspath(dataset[1]), os.path.abspath(dataset[2])
    doc = check_coco_instances(json_file, image_root, name)
    if framework == "d2":
        return ["DATASETS.TEST", f"('{name}',)"]
    classes = ",".join(c["name"] for c in sorted(doc["categories"], key=lambda c: c["id"]))
    return ["test_dataloader.dataset.data_root=", f"test_dataloader.dataset.ann_file={json_file}",
            f"test_dataloader.dataset.data_prefix.img={image_root}/",
            f"test_dataloader.dataset.metainfo.classes=[{classes}]", f"test_evaluator.ann_file={json_file}"]


# -------------------------------------------------------------------------------------------------- main
class ChildRefused(Exception):
    """The evaluation entry point refused its input (exit 2): its own ``error:`` line is the message."""


def run_logged(cmd: list, log_path: str, env: dict) -> None:
    """Run with output shown live and saved; a refusal (exit 2) is :class:`ChildRefused` with the child's error line,
    any other failure names the log and the command."""
    print(f"[eval_widths] {shlex.join(cmd)}", flush=True)
    with open(log_path, "wb") as log:
        rc, _ = tee_process(cmd, log, REPO, env)
    if rc == 2:
        with open(log_path, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip().startswith("error:")]
        raise ChildRefused(lines[-1] if lines else f"error: the evaluation refused its input; log: {log_path}")
    if rc != 0:
        raise SystemExit(f"[eval_widths] evaluation failed (exit {rc}); log: {log_path}")


def evaluate_each_width(args, config: str, out: str, widths, weights: dict, env: dict, created: bool) -> list[dict]:
    """One evaluation process per width (the framework's test entry point); its metrics as rows. A refusal by the
    entry point (exit 2) is reported as its own error line, exit 2, and leaves nothing behind."""
    eval_command, read_metrics, _ = PER_WIDTH[args.framework]
    rows = []
    for i, w in enumerate(widths, 1):
        t0 = time.time()
        print(f"[eval_widths] ({i}/{len(widths)}) width {w:g}: COCO evaluation", flush=True)
        wdir = os.path.join(out, "eval", width_tag(w))  # made by the entry point itself
        try:
            run_logged(eval_command(sys.executable, config, weights[w], wdir, w, args.num_gpus, args.opts,
                                    args.dataset if args.framework == "d2" else None),
                       os.path.join(out, "logs", f"eval_{width_tag(w)}.log"), env)
        except ChildRefused as e:  # the user's input is wrong: say what the entry point said
            if created:
                shutil.rmtree(out, ignore_errors=True)
            print(str(e), file=sys.stderr)
            raise SystemExit(2) from None
        rows.append({"width": w, **read_metrics(wdir, w), "weights": weights[w],
                     "eval_seconds": round(time.time() - t0, 1)})
    return rows


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("weights", help="detector weights (or a training run's folder); '{width}' in the path is "
                                   "replaced by the width as in its tag w0.50 / w0.375 (0.50, 0.375)")
    p.add_argument("--widths", type=float, nargs="+", required=True)
    p.add_argument("--framework", choices=sorted(FRAMEWORKS), default="d2")
    p.add_argument("--config", default=None, help="detector config (default: the tiny Mask R-CNN of the framework)")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--num-gpus", type=int, default=0, help="0: CPU")
    p.add_argument("--datasets", default=None, help="sets $US3L_DATASETS (where us3l_shapes is looked up)")
    p.add_argument("--dataset", nargs=3, metavar=("NAME", "JSON", "IMAGE_ROOT"), default=None,
                   help="evaluate on your own COCO-format instance set instead of the config's test set")
    p.add_argument("--arch", default=None, help="backbone for profiling (default: read from the config)")
    p.add_argument("--profile-size", type=int, default=224, help="input side for GFLOPs and latency")
    p.add_argument("--latency-runs", type=int, default=10, help="timed forward passes per width (0: skip)")
    p.add_argument("--title", default="")
    p.add_argument("--calibrate-batches", type=int, default=0,
                   help="slimmable detector: calibrate BN of uncalibrated widths on N training batches first "
                        "(default 0: refuse them)")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                   help="passed to the framework's test entry point (Detectron2 KEY VALUE / MMDetection key=value)")
    args = p.parse_args(argv)
    check_output_dir(args.output_dir, "--output-dir")  # before any input is read or evaluation runs
    if args.dataset:
        try:
            args.opts = [*args.opts, *dataset_opts(args.framework, args.dataset)]
        except BAD_INPUT_ERRORS as e:
            print(f"error: {e}".splitlines()[0], file=sys.stderr)
            raise SystemExit(2) from None

    arch_of_config = PER_WIDTH[args.framework][2]
    # defaults live in the repository; a user's path is relative to where they stand (stages run in REPO)
    config = (os.path.abspath(args.config) if args.config
              else os.path.join(REPO, get_framework(args.framework).configs["per-width"]))
    out = os.path.abspath(args.output_dir)
    if "{width}" not in args.weights and not os.path.isdir(args.weights):
        slim = slimmable_main(args, config, out)
        if slim is not None:
            return slim
    widths = sorted({float(w) for w in args.widths}, reverse=True)
    weights = {w: os.path.abspath(resolve_weights(weights_for(args.weights, w), args.framework)) for w in widths}
    missing = [p for p in weights.values() if not os.path.exists(p)]
    if missing:  # before the output folder is made: a refused run leaves nothing behind
        raise FileNotFoundError(f"weights not found: {missing}")
    created = not os.path.exists(out)
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.datasets:
        env["US3L_DATASETS"] = os.path.abspath(args.datasets)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")

    rows = evaluate_each_width(args, config, out, widths, weights, env, created)
    arch = args.arch or rows[0].get("arch") or arch_of_config(config)
    from us3l.profiling import profile_width

    print(f"[eval_widths] profiling {arch} backbone at {len(widths)} widths "
          f"(1x3x{args.profile_size}x{args.profile_size}, {args.latency_runs} timed runs)", flush=True)
    for row in rows:
        cost = profile_width(arch, row["width"], image_size=args.profile_size, runs=args.latency_runs)
        row.update(gflops=cost["gflops"], params_m=cost["params_m"],
                   latency_ms=cost["latency_ms"] if args.latency_runs > 0 else None, arch=arch)

    import torch

    meta = {"framework": args.framework, "config": os.path.abspath(config), "weights": args.weights,
            "arch": arch, "profile_input": f"1x3x{args.profile_size}x{args.profile_size}",
            "torch_threads": torch.get_num_threads(), "latency_runs": args.latency_runs}
    notes = [f"AP: COCO AP (pycocotools, 0-100) of {args.framework} Mask R-CNN fine-tuned and evaluated at each width.",
             f"Backbone cost: {arch} trunk at the width, fvcore FLOPs (1 multiply-add = 1 flop) on "
             f"1x3x{args.profile_size}x{args.profile_size}; CPU latency = median of {args.latency_runs} forward "
             f"passes with {torch.get_num_threads()} threads."]
    paths = write_results(rows, out, args.title, meta, notes)
    flat = {}
    for r in rows:
        for key in ("box_AP", "mask_AP", "box_AP50", "mask_AP50", "gflops", "params_m", "latency_ms"):
            flat[f"{width_tag(r['width'])}/{key}"] = r.get(key)
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(flat, f, indent=2)
    print(render_markdown(sorted(rows, key=lambda r: -r["width"]), args.title))
    print("[eval_widths] wrote " + ", ".join(paths.values()), flush=True)
    return {"rows": rows, "paths": paths}


def slimmable_main(args, config: str, out: str):
    """One checkpoint of a universally slimmable detector, evaluated in-process at every width (None: not one)."""
    from us3l.checkpoint import CheckpointError
    from us3l.detection.backends import USER_ERRORS, load_backend
    from us3l.ops import UncalibratedWidthError

    if args.datasets:
        os.environ["US3L_DATASETS"] = os.path.abspath(args.datasets)
    try:
        backend = load_backend(args.framework)
        if not backend.is_slimmable(config, args.opts):
            return None
        if args.framework == "d2":
            from detectron2.utils.logger import setup_logger

            import us3l.d2 as d2

            setup_logger(name="detectron2")  # Detectron2's own progress and evaluation logs, as its tools show them
            d2.register_us3l_datasets()
            if args.dataset:
                d2.register_coco_json(*args.dataset)
        rows = backend.evaluate(args.weights, config, args.widths, out, args.opts,
                                calibrate_batches=args.calibrate_batches)
    except (CheckpointError, UncalibratedWidthError, *USER_ERRORS) as e:
        print(f"error: {e}".splitlines()[0], file=sys.stderr)
        raise SystemExit(2) from None
    import torch

    meta = {"framework": args.framework, "config": os.path.abspath(config), "weights": os.path.abspath(args.weights),
            "mode": "one slimmable checkpoint", "profile_input": rows[0].get("profile_input"),
            "torch_threads": torch.get_num_threads()}
    notes = [f"AP: COCO AP (pycocotools, 0-100) of ONE slimmable {args.framework} detector evaluated at each width "
             "(BN statistics calibrated per width).",
             "detector GFLOPs: the whole detector (backbone, FPN, RPN, ROI heads) at the width, fvcore "
             f"(one multiply-add = one flop) on one test image ({rows[0].get('profile_input')}); "
             "backbone GFLOPs: its trunk on the same image."]
    paths = write_results(rows, out, args.title, meta, notes)
    flat = {f"{width_tag(r['width'])}/{k}": r.get(k) for r in rows
            for k in ("box_AP", "mask_AP", "box_AP50", "mask_AP50", "detector_gflops", "gflops", "params_m")}
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(flat, f, indent=2)
    print(render_markdown(sorted(rows, key=lambda r: -r["width"]), args.title))
    print("[eval_widths] wrote " + ", ".join(p for p in paths.values() if p), flush=True)
    return {"rows": rows, "paths": paths}


if __name__ == "__main__":
    exit_with(main)
