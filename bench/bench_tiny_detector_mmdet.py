#!/usr/bin/env python
"""What the tiny MMDetection configs' proposal and RoI counts buy, side by side on one CPU thread.

  PYTHONPATH=$PWD OMP_NUM_THREADS=1 python bench/bench_tiny_detector_mmdet.py

One sandwich training step (max, min and one random width, batch 4 at 128 px) of the slimmable ResNet-18
Mask R-CNN of the main job's ``--mmdet`` run (``mask-rcnn_us-r50_fpn_slimmable_tiny.py``) with the config's
counts (``tiny_train_cfg`` / ``tiny_test_cfg``) against the ``train_cfg`` / ``test_cfg`` of MMDetection's own
``mask-rcnn_r50_fpn.py``, the two stepping alternately (:func:`us3l.profiling.interleaved_ratios`) from the
same initial weights on the same batches. The data is the embedded ``simple`` set generated into a temporary
folder (96 px images, resized to 128 px by the config's pipeline); the backbone is randomly initialised.
"""
from __future__ import annotations

import argparse
import atexit
import itertools
import os
import shutil
import tempfile

import torch

CONFIG = "projects/segmentation/mmdet_configs/mask-rcnn_us-r50_fpn_slimmable_tiny.py"
MMDET_MODEL = "mmdet::_base_/models/mask-rcnn_r50_fpn.py"
# the main job's detector (us3l.pipeline.commands.dataset_opts for resnet18 and the embedded set)
OPTS = {"model.backbone.depth": 18, "model.backbone.init_cfg": None, "model.neck.in_channels": [64, 128, 256, 512],
        "model.roi_head.bbox_head.num_classes": 4, "model.roi_head.mask_head.num_classes": 4,
        "model.sandwich.num_random": 1}


def build(root: str, counts_from=None):
    """(model, stepper over ``batches``) with the config's counts, or with those of ``counts_from``'s model."""
    from mmdet.registry import MODELS
    from mmengine.optim import OptimWrapper

    from us3l.mmdet.slimmable_eval import slimmable_config

    cfg = slimmable_config(os.path.join(root, CONFIG), OPTS)
    if counts_from is not None:
        cfg.model.train_cfg, cfg.model.test_cfg = counts_from.model.train_cfg, counts_from.model.test_cfg
    torch.manual_seed(0)  # the same initial weights on both sides
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.train()
    return cfg, model, OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))


def stepper(model, optim, batches):
    """One sandwich step of ``model`` per call (its own ``train_step``, as mmengine's loop calls it)."""
    cycle = itertools.cycle(batches)
    return lambda: model.train_step(next(cycle), optim)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=6, help="timed step pairs")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--output", default="bench/tiny_detector_mmdet.md")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    work = tempfile.mkdtemp(prefix="us3l_tiny_detector_mmdet_")
    atexit.register(shutil.rmtree, work, True)

    from mmengine.hub import get_config

    from us3l.data.synthetic import DEFAULT_DATASET_NAME, generate_coco_dataset
    from us3l.mmdet.slimmable_eval import data_batches
    from us3l.profiling import bench_command, interleaved_ratios, machine_summary, ratio_row, write_report

    generate_coco_dataset(os.path.join(work, DEFAULT_DATASET_NAME), num_train=32, num_val=4, image_size=96)
    os.environ["US3L_DATASETS"] = work
    mmdet_model = get_config(MMDET_MODEL)
    cfg, tiny, tiny_optim = build(root)
    _, default, default_optim = build(root, counts_from=mmdet_model)
    batches = list(itertools.islice(data_batches(cfg.train_dataloader), 4))
    ratios = interleaved_ratios(stepper(tiny, tiny_optim, batches), stepper(default, default_optim, batches),
                                args.steps, warmup=1)

    tc, dc = cfg.model.train_cfg, mmdet_model.model.train_cfg
    counts = "RPN {} anchors, proposals {} per level / {} per image, {} RoIs per image"
    head = "| comparison | wall ratio, median [IQR] | thread-CPU ratio | A s | B s | ratio <= 1 (wall / CPU) |"
    lines = ["# Tiny MMDetection settings of the main job: training step cost", "",
             f"Command: `{bench_command()}`", "", f"Machine: {machine_summary()}, {args.threads} thread(s).", "",
             "A: " + counts.format(tc.rpn.sampler.num, tc.rpn_proposal.nms_pre, tc.rpn_proposal.max_per_img,
                                   tc.rcnn.sampler.num) + " (the tiny configs).",
             "B: " + counts.format(dc.rpn.sampler.num, dc.rpn_proposal.nms_pre, dc.rpn_proposal.max_per_img,
                                   dc.rcnn.sampler.num) + f" (MMDetection's `{MMDET_MODEL}`).", "",
             head, "|:---|---:|---:|---:|---:|:---:|",
             ratio_row(f"A / B: sandwich step, batch {len(batches[0]['inputs'])} ({args.steps} pairs)", ratios, 1.0)]
    write_report(lines, args.output)


if __name__ == "__main__":
    main()
