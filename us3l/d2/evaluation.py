"""COCO evaluation of a detector at its width: box / mask AP via pycocotools, results keyed by width.

This Detectron2 build has no C++ ops, hence ``use_fast_impl=False`` (pycocotools' own COCOeval).
Each evaluated dataset writes ``OUTPUT_DIR/metrics_<dataset>_w<width>.json`` =
``{"width", "arch", "dataset", "bbox": {...}, "segm": {...}}``, so runs at several widths never overwrite
each other and a table can be assembled from the files.

``TEST.IMS_PER_BATCH`` (added by :func:`us3l.d2.add_us3l_config`, default 1 as Detectron2 0.6 hard-codes):
images per inference batch. Small detectors on a CPU spend much of each forward in per-operator overhead,
so the tiny configs batch 8 (96 px images: 0.70x the time, the same AP; bench/tiny_detector.md).
"""
from __future__ import annotations

import json
import math
import os

import torch
import torch.nn as nn
from detectron2.evaluation import COCOEvaluator
from detectron2.utils import comm

from ..detection import require_calibrated
from ..ops.width_state import canonical_width
from ..width import get_width, set_width, width_tag
from .config import us3l_width
from .resize import test_mapper


def build_coco_evaluator(cfg, dataset_name: str, output_folder: str | None = None) -> COCOEvaluator:
    output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    return COCOEvaluator(dataset_name, output_dir=output_folder, use_fast_impl=False)


def build_test_loader(cfg, dataset_name: str):
    """Detectron2's test loader (its dataset, mapper, sampler and workers) with ``TEST.IMS_PER_BATCH`` images
    per batch; images of a batch are padded to a common size by the model, as in training."""
    from detectron2.data import build_detection_test_loader

    batch = int(cfg.TEST.get("IMS_PER_BATCH", 1))
    if batch < 1:
        raise ValueError(f"TEST.IMS_PER_BATCH must be a positive number of images, got {batch}")
    loader = build_detection_test_loader(cfg, dataset_name, mapper=test_mapper(cfg))
    if batch == 1:
        return loader
    return torch.utils.data.DataLoader(loader.dataset, batch_size=batch, sampler=loader.sampler,
                                       num_workers=loader.num_workers, collate_fn=loader.collate_fn)


def _finite(metrics: dict) -> dict:
    """NaN (a category with no ground truth) becomes null so that the file stays valid JSON."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}


def save_width_metrics(cfg, dataset_name: str, results: dict, width: float | None = None,
                       output_dir: str | None = None) -> str | None:
    """Write one dataset's metrics keyed by the width (default: the configured one) into ``output_dir`` (default
    ``OUTPUT_DIR``), main process only; returns the path."""
    if not comm.is_main_process():
        return None
    width = us3l_width(cfg) if width is None else width
    output_dir = output_dir or cfg.OUTPUT_DIR
    record = {"width": width, "arch": f"resnet{cfg.MODEL.RESNETS.DEPTH}", "dataset": dataset_name,
              "weights": cfg.MODEL.WEIGHTS}
    record.update({task: _finite(dict(m)) for task, m in results.items()})
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, f"metrics_{dataset_name}_{width_tag(width)}.json")
    with open(path, "w") as f:
        json.dump(record, f, indent=2)
    return path


def key_by_width(width: float, results: dict) -> dict:
    """``{"bbox": {...}}`` -> ``{"w0.50/bbox": {...}}`` (what the event storage and logs then show)."""
    tag = width_tag(width)
    return {f"{tag}/{task}": metrics for task, metrics in results.items()}


def unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def prepare_for_width(model: nn.Module, width: float) -> float:
    """Set the whole detector to ``width`` for evaluation; refuses a width without BN statistics."""
    net = unwrap(model)
    w = set_width(net, width)
    require_calibrated(net, w)
    return w


def evaluate_widths(model, cfg, widths, output_dir: str | None = None) -> dict[float, dict]:
    """COCO results of ONE slimmable detector on the first of ``cfg.DATASETS.TEST`` at each width (widest first),
    ``{width: {"bbox": {"AP": ...}, "segm": {...}}}``, as :func:`us3l.mmdet.slimmable_eval.evaluate_widths` does:
    every width checked calibrated before the first is evaluated, then set on the model and run through
    Detectron2's ``inference_on_dataset`` with the COCO evaluator. Each width's metrics file goes to
    ``output_dir/eval/w0.50/`` (default ``cfg.OUTPUT_DIR``); the model's width is restored."""
    from detectron2.evaluation import inference_on_dataset, print_csv_format

    net = unwrap(model)
    widths = sorted({canonical_width(w) for w in widths}, reverse=True)
    for w in widths:
        require_calibrated(net, w)
    name = cfg.DATASETS.TEST[0]
    loader = build_test_loader(cfg, name)
    before = get_width(net)
    out = {}
    try:
        for w in widths:
            prepare_for_width(net, w)
            folder = os.path.join(output_dir or cfg.OUTPUT_DIR, "eval", width_tag(w))
            results = inference_on_dataset(model, loader,
                                           build_coco_evaluator(cfg, name, os.path.join(folder, "inference", name)))
            if comm.is_main_process():
                print_csv_format(results)
            save_width_metrics(cfg, name, results, width=w, output_dir=folder)
            out[w] = dict(results)
    finally:
        set_width(net, before)
    return out
