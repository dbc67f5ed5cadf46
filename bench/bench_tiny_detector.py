#!/usr/bin/env python
"""What the main job's tiny Detectron2 settings buy, side by side on one CPU thread.

  PYTHONPATH=$PWD OMP_NUM_THREADS=1 python bench/bench_tiny_detector.py

1. One sandwich training step (max, min and one random width, batch 4, 96 px) of the slimmable ResNet-18
   Mask R-CNN with the tiny configs' RPN training proposals (``PRE/POST_NMS_TOPK_TRAIN`` 400 / 200) against
   Detectron2's FPN defaults (2000 / 1000), the two trainers stepping alternately
   (:func:`us3l.profiling.interleaved_ratios`).
2. COCO evaluation at width 1.0 of one such detector (trained a few more steps, BN calibrated) with
   ``TEST.IMS_PER_BATCH`` 8 against 1, alternately, and whether their box / mask AP agree.

The data is the embedded ``simple`` set generated into a temporary folder (64 training / 32 validation
images of 96 px, as the main job's images); the backbone is randomly initialised.
"""
from __future__ import annotations

import argparse
import atexit
import os
import shutil
import tempfile

import torch

TINY = "projects/segmentation/configs/mask_rcnn_US-R50_FPN_slimmable_tiny.yaml"
OPTS = ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.ROI_HEADS.NUM_CLASSES", "4",
        "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MIN_SIZE_TEST", "96", "MODEL.DEVICE", "cpu", "SEED", "0",
        "MODEL.US3L.CALIBRATION.WIDTHS", "[1.0]", "SOLVER.MAX_ITER", "1000", "SOLVER.STEPS", "(900,)"]
DEFAULT_PROPOSALS = ["MODEL.RPN.PRE_NMS_TOPK_TRAIN", "2000", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "1000"]


def build_trainer(root: str, out: str, opts):
    from us3l.d2 import load_config
    from us3l.d2.sandwich import trainer_class

    cfg = load_config(os.path.join(root, TINY), OPTS + ["OUTPUT_DIR", out] + list(opts))
    trainer = trainer_class(cfg)(cfg)
    trainer.resume_or_load(resume=False)
    return cfg, trainer


def stepper(trainer):
    """One sandwich step of ``trainer`` per call: Detectron2's own ``run_step``, then the learning-rate schedule's
    step (what its LRScheduler hook does)."""
    def step():
        trainer._trainer.iter += 1
        trainer._trainer.run_step()
        trainer.scheduler.step()
    return step


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=12, help="timed step pairs")
    p.add_argument("--train-steps", type=int, default=160, help="extra steps before the evaluation comparison")
    p.add_argument("--eval-pairs", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--output", default="bench/tiny_detector.md")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    work = tempfile.mkdtemp(prefix="us3l_tiny_detector_")
    atexit.register(shutil.rmtree, work, True)

    from detectron2.utils.events import EventStorage

    from us3l.d2 import register_us3l_datasets
    from us3l.d2.sandwich import SlimmableDetectorTrainer, calibrate_d2_detector
    from us3l.data.synthetic import DEFAULT_DATASET_NAME, generate_coco_dataset
    from us3l.profiling import bench_command, interleaved_ratios, machine_summary, ratio_row, write_report

    generate_coco_dataset(os.path.join(work, DEFAULT_DATASET_NAME), num_train=64, num_val=32, image_size=96)
    register_us3l_datasets(work)
    cfg, tiny = build_trainer(root, os.path.join(work, "tiny"), [])
    _, default = build_trainer(root, os.path.join(work, "default"), DEFAULT_PROPOSALS)
    with EventStorage(0):
        train = interleaved_ratios(stepper(tiny), stepper(default), args.steps, warmup=2)
        for _ in range(args.train_steps):
            stepper(tiny)()
    model = tiny.model
    calibrate_d2_detector(model, tiny._trainer._data_loader_iter, [1.0], 4)  # the loader's one iterator
    results = {}

    def evaluate(batch: int):
        def run():
            c = cfg.clone()
            c.defrost()
            c.TEST.IMS_PER_BATCH = batch
            c.OUTPUT_DIR = os.path.join(work, f"eval{batch}")
            results[batch] = SlimmableDetectorTrainer.test(c, model)
        return run

    ev = interleaved_ratios(evaluate(8), evaluate(1), args.eval_pairs, warmup=1)
    ap = {b: (r["w1.00/bbox"]["AP"], r["w1.00/segm"]["AP"]) for b, r in results.items()}

    head = "| comparison | wall ratio, median [IQR] | thread-CPU ratio | A s | B s | ratio <= 1 (wall / CPU) |"
    lines = ["# Tiny Detectron2 settings of the main job: training step and evaluation cost", "",
             f"Command: `{bench_command()}`", "", f"Machine: {machine_summary()}, {args.threads} thread(s).", "",
             head, "|:---|---:|---:|---:|---:|:---:|",
             ratio_row(f"A: sandwich step, proposals 400/200 / B: Detectron2 defaults 2000/1000 ({args.steps} pairs)",
                       train, 1.0),
             ratio_row(f"A: evaluation of 32 images, IMS_PER_BATCH 8 / B: 1 ({args.eval_pairs} pairs)", ev, 1.0),
             "", f"Box / mask AP at width 1.0 after {args.train_steps + args.steps + 2} steps: batch 8 "
             f"{ap[8][0]:.4f} / {ap[8][1]:.4f}, batch 1 {ap[1][0]:.4f} / {ap[1][1]:.4f} "
             f"({'equal' if ap[8] == ap[1] else 'DIFFERENT'}"
             f"{'; all 0: train longer for a comparison that means something' if not any(ap[1]) else ''})."]
    write_report(lines, args.output)


if __name__ == "__main__":
    main()
