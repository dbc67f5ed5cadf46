#!/usr/bin/env python
"""Accuracy of ONE slimmable detector vs detectors fine-tuned separately per width (Detectron2, embedded set).

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python bench/slimmable_vs_separate.py --seeds 0 1 2 --iters 300 \
        --widths 1.0 0.75 0.5 0.25 --weights pretrained/us3l_resnet18.pkl --output bench/slimmable_vs_separate.md

Per seed: (a) one sandwich run of ``--iters`` iterations (max, min, ``--num-random`` random widths per
iteration; so every width gets ``--iters`` steps), BN calibrated at ``--widths``, COCO-evaluated at each;
(b) one ordinary fine-tuning run per width (width-sized backbone, full-width heads as today's per-width
configs) of ``--iters`` iterations each, evaluated at its width. Same data, schedule, seed and initial
backbone for both arms. The table gives box (and mask) AP mean +- std over seeds per width and the total
training wall time of each arm (both measured in this process, one after the other).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

import us3l.d2 as d2
from us3l.d2.engine import US3LTrainer
from us3l.d2.sandwich import SlimmableDetectorTrainer

SLIM = "projects/segmentation/configs/mask_rcnn_US-R50_FPN_slimmable_tiny.yaml"
PLAIN = "projects/segmentation/configs/mask_rcnn_US-R50_FPN_tiny.yaml"


def _common(args, seed, out):
    return ["MODEL.RESNETS.DEPTH", str(args.depth), "MODEL.RESNETS.RES2_OUT_CHANNELS",
            "64" if args.depth < 50 else "256", "SEED", str(seed), "SOLVER.MAX_ITER", str(args.iters),
            "SOLVER.STEPS", f"({int(args.iters * 0.8)},)", "SOLVER.CHECKPOINT_PERIOD", "1000000",
            "MODEL.WEIGHTS", args.weights, "OUTPUT_DIR", out, "TEST.PRECISE_BN.NUM_ITER", "20", *args.opts]


def run_slimmable(args, seed, out) -> tuple[dict, float]:
    widths = "[" + ", ".join(str(w) for w in args.widths) + "]"
    cfg = d2.load_config(SLIM, _common(args, seed, out) + [
        "MODEL.US3L.SANDWICH.NUM_RANDOM", str(args.num_random), "MODEL.US3L.CALIBRATION.WIDTHS", widths,
        "MODEL.US3L.CALIBRATION.NUM_BATCHES", "20", "DATASETS.TEST", "()"])
    t0 = time.perf_counter()
    trainer = SlimmableDetectorTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    seconds = time.perf_counter() - t0
    ap = {}
    for w in args.widths:
        opts = _common(args, seed, os.path.join(out, f"eval_w{w}")) + ["MODEL.US3L.WIDTH_MULT", str(w)]
        c = d2.load_config(SLIM, opts)
        res = SlimmableDetectorTrainer.test(c, trainer.model)
        ap[w] = {k.split("/")[1]: v["AP"] for k, v in res.items()}
    return ap, seconds


def run_separate(args, seed, out) -> tuple[dict, float]:
    ap, seconds = {}, 0.0
    if args.weights == "":
        bn = ["MODEL.US3L.BN_STATS", "reset"]
    else:
        bn = []
    for w in args.widths:
        opts = _common(args, seed, os.path.join(out, f"w{w}")) + ["MODEL.US3L.WIDTH_MULT", str(w)] + bn
        cfg = d2.load_config(PLAIN, opts)
        t0 = time.perf_counter()
        trainer = US3LTrainer(cfg)
        trainer.resume_or_load(resume=False)
        trainer.train()
        seconds += time.perf_counter() - t0
        ap[w] = {k.split("/")[1]: v["AP"] for k, v in trainer._last_eval_results.items()}
    return ap, seconds


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--widths", type=float, nargs="+", default=[1.0, 0.75, 0.5, 0.25])
    p.add_argument("--num-random", type=int, default=2)
    p.add_argument("--depth", type=int, default=18)
    p.add_argument("--weights", default="", help="converted US3L backbone .pkl (default: random init for both arms)")
    p.add_argument("--datasets", default=None,
                   help="$US3L_DATASETS holding us3l_shapes (tools/make_embedded_dataset.py)")
    p.add_argument("--work-dir", default="output/slimmable_vs_separate")
    p.add_argument("--output", default=None)
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[])
    args = p.parse_args(argv)
    d2.register_us3l_datasets(args.datasets)
    results = {"slimmable": {}, "separate": {}, "seconds": {"slimmable": [], "separate": []}}
    for seed in args.seeds:
        for arm, fn in (("slimmable", run_slimmable), ("separate", run_separate)):
            ap, sec = fn(args, seed, os.path.join(args.work_dir, arm, f"seed{seed}"))
            results[arm][seed] = ap
            results["seconds"][arm].append(sec)
            print(f"[bench] seed {seed} {arm}: {json.dumps(ap)} ({sec:.0f} s)", flush=True)

    def stat(arm, w, task):
        v = [results[arm][s][w].get(task) for s in args.seeds if results[arm][s][w].get(task) is not None]
        if not v:
            return "n/a"
        return f"{statistics.mean(v):.2f} +- {statistics.stdev(v) if len(v) > 1 else 0.0:.2f}"

    lines = [f"seeds {args.seeds}, {args.iters} iterations per width, ResNet-{args.depth}, weights "
             f"{args.weights or 'random init'}", "",
             "| width | slimmable box AP | separate box AP | slimmable mask AP | separate mask AP |",
             "|---:|---:|---:|---:|---:|"]
    for w in args.widths:
        lines.append(f"| {w:.2f} | {stat('slimmable', w, 'bbox')} | {stat('separate', w, 'bbox')} | "
                     f"{stat('slimmable', w, 'segm')} | {stat('separate', w, 'segm')} |")
    sec = results["seconds"]
    lines += ["", f"training wall time per seed (mean): slimmable {statistics.mean(sec['slimmable']):.0f} s, "
                  f"separate (sum over widths) {statistics.mean(sec['separate']):.0f} s"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
        with open(os.path.splitext(args.output)[0] + ".json", "w") as f:
            json.dump(results, f, indent=2, default=str)


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    main()
