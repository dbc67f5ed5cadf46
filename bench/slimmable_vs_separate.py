#!/usr/bin/env python
"""Accuracy of ONE slimmable detector vs detectors fine-tuned separately per width (Detectron2, embedded set).

    OMP_NUM_THREADS=1 python bench/slimmable_vs_separate.py --seeds 0 1 2 --iters 200 \
        --widths 1.0 0.75 0.5 0.25 --weights backbone_d2.pkl --output bench/slimmable_vs_separate.md

Per seed: (a) one sandwich run of ``--iters`` iterations (max, min, ``--num-random`` random widths per
iteration; so the max and min widths get ``--iters`` steps each), BN calibrated at ``--widths``,
COCO-evaluated at each; (b) per width, the SAME slimmable architecture (neck and heads slimmed with the
width) fine-tuned at that width alone (sandwich off) for ``--iters`` iterations, calibrated and evaluated at
it. Same data, schedule, seed and initial backbone for both arms. The table gives box and mask AP mean +-
std over seeds per width and the training time of each arm (wall and CPU seconds of this process).

Seeds may run in separate processes side by side (``--seeds 0 --output-json a.json`` ...) and be merged
into one table with ``--merge a.json b.json ... --output T.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

import us3l.d2 as d2
from us3l.d2.sandwich import SlimmableDetectorTrainer
from us3l.pipeline.summary import mean_std

SLIM = "projects/segmentation/configs/mask_rcnn_US-R50_FPN_slimmable_tiny.yaml"


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
    for w in args.widths:
        wdir = os.path.join(out, f"w{w}")
        cfg = d2.load_config(SLIM, _common(args, seed, wdir) + [
            "MODEL.US3L.WIDTH_MULT", str(w), "MODEL.US3L.SANDWICH.ENABLED", "False",
            "MODEL.US3L.CALIBRATION.WIDTHS", f"[{w}]", "MODEL.US3L.CALIBRATION.NUM_BATCHES", "20",
            "DATASETS.TEST", "()"])
        t0 = time.perf_counter()
        trainer = SlimmableDetectorTrainer(cfg)
        trainer.resume_or_load(resume=False)
        trainer.train()
        seconds += time.perf_counter() - t0
        c = d2.load_config(SLIM, _common(args, seed, os.path.join(wdir, "eval")) + ["MODEL.US3L.WIDTH_MULT", str(w)])
        res = SlimmableDetectorTrainer.test(c, trainer.model)
        ap[w] = {k.split("/")[1]: v["AP"] for k, v in res.items()}
    return ap, seconds


def _mean_std(values):
    mean, std = mean_std(values)
    return mean, std or 0.0  # one seed: no spread to show


def render(results: dict) -> str:
    """Table of both arms per width (mean +- std over seeds), the difference and its verdict, the costs."""
    meta, seeds = results["meta"], sorted(results["slimmable"], key=int)
    lines = [f"seeds {[int(x) for x in seeds]}, {meta['iters']} iterations, ResNet-{meta['depth']}, "
             f"sandwich random widths {meta['num_random']}, weights {meta['weights'] or 'random init'}", "",
             "| width | task | slimmable AP | separate AP | slimmable - separate | 2 x larger std | within noise |",
             "|---:|---|---:|---:|---:|---:|---|"]
    for w in meta["widths"]:
        for task in ("bbox", "segm"):
            a = [results["slimmable"][s][str(w)][task] for s in seeds]
            b = [results["separate"][s][str(w)][task] for s in seeds]
            (ma, sa), (mb, sb) = _mean_std(a), _mean_std(b)
            bound = 2 * max(sa, sb)
            lines.append(f"| {w:.2f} | {task} | {ma:.2f} +- {sa:.2f} | {mb:.2f} +- {sb:.2f} | {ma - mb:+.2f} | "
                         f"{bound:.2f} | {'yes' if abs(ma - mb) <= bound else 'no'} |")
    cost = {arm: {k: _mean_std([results["cost"][arm][s][k] for s in seeds]) for k in ("wall_s", "cpu_s")}
            for arm in ("slimmable", "separate")}
    lines += ["", "| arm | training wall s per seed | training CPU s per seed |", "|---|---:|---:|"]
    for arm in ("slimmable", "separate"):
        lines.append(f"| {arm}{' (sum over widths)' if arm == 'separate' else ''} | "
                     f"{cost[arm]['wall_s'][0]:.0f} +- {cost[arm]['wall_s'][1]:.0f} | "
                     f"{cost[arm]['cpu_s'][0]:.0f} +- {cost[arm]['cpu_s'][1]:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--widths", type=float, nargs="+", default=[1.0, 0.75, 0.5, 0.25])
    p.add_argument("--num-random", type=int, default=1)
    p.add_argument("--depth", type=int, default=18)
    p.add_argument("--weights", default="", help="converted US3L backbone .pkl (default: random init for both arms)")
    p.add_argument("--datasets", default=None,
                   help="$US3L_DATASETS holding us3l_shapes (tools/make_embedded_dataset.py)")
    p.add_argument("--work-dir", default="output/slimmable_vs_separate")
    p.add_argument("--output", default=None, help="markdown table (and the raw results beside it as .json)")
    p.add_argument("--output-json", default=None, help="raw results only (to --merge later)")
    p.add_argument("--merge", nargs="+", default=None, help="raw results of earlier runs: render them as one table")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[])
    args = p.parse_args(argv)
    if args.merge:
        parts = [json.load(open(f)) for f in args.merge]
        results = {"meta": parts[0]["meta"], "slimmable": {}, "separate": {},
                   "cost": {"slimmable": {}, "separate": {}}}
        for part in parts:
            if {k: v for k, v in part["meta"].items() if k != "seeds"} != \
                    {k: v for k, v in results["meta"].items() if k != "seeds"}:
                raise SystemExit(f"--merge: runs with different settings: {part['meta']} vs {results['meta']}")
            for arm in ("slimmable", "separate"):
                results[arm].update(part[arm])
                results["cost"][arm].update(part["cost"][arm])
    else:
        d2.register_us3l_datasets(args.datasets)
        meta = {k: getattr(args, k) for k in ("iters", "widths", "num_random", "depth", "weights", "opts")}
        results = {"meta": meta, "slimmable": {}, "separate": {}, "cost": {"slimmable": {}, "separate": {}}}
        for seed in args.seeds:
            for arm, fn in (("slimmable", run_slimmable), ("separate", run_separate)):
                cpu0 = time.process_time()
                ap, sec = fn(args, seed, os.path.join(args.work_dir, arm, f"seed{seed}"))
                results[arm][str(seed)] = {str(w): v for w, v in ap.items()}
                results["cost"][arm][str(seed)] = {"wall_s": sec, "cpu_s": time.process_time() - cpu0}
                print(f"[bench] seed {seed} {arm}: {json.dumps(ap)} ({sec:.0f} s)", flush=True)
    text = render(results)
    print(text)
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(results, f, indent=2)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
        with open(os.path.splitext(args.output)[0] + ".json", "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    main()
