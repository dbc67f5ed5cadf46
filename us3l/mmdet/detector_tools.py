"""MMDetection backend of the slimmable-detector tools (contract: :mod:`us3l.detection.backends`).

``tools/export_detector.py``, ``tools/calibrate_detector.py`` and ``tools/eval_widths.py`` call these four
functions for ``.py`` configs. Overrides (``opts``) are mmengine ``key=value`` pairs, as ``--cfg-options``.
The exported plain detector goes on to ONNX with ``export_onnx`` / ``evaluate_onnx`` (:mod:`.onnx_export`,
onnxruntime on CPU, standard operators only).
Files written here hold tensors and plain metadata only (``torch.load(weights_only=True)`` reads them).
"""
from __future__ import annotations

import argparse
import os

import torch
import torch.nn as nn
from mmengine.config import DictAction
from mmengine.logging import print_log

from ..detection import fvcore_total_gflops, require_calibrated
from ..detection.backends import export_config_path
from ..detection.calibration import prepare_widths
from ..detection.width_rows import add_cost, width_row
from ..ops.width_state import canonical_width
from ..width import set_width
from ..width import width as width_ctx
from .export import export_detector
from .slimmable_eval import (
    calibrate_widths,
    data_batches,
    evaluate_widths,
    load_slimmable_detector,
    save_slimmable_detector,
    slimmable_config,
)


def parse_opts(opts=()) -> dict:
    """``["a.b=1", "c=[1,2]"]`` -> ``{"a.b": 1, "c": [1, 2]}`` (mmengine's ``--cfg-options`` parsing)."""
    if not opts:
        return {}
    p = argparse.ArgumentParser()
    p.add_argument("--opts", nargs="+", action=DictAction)
    return p.parse_args(["--opts", *opts]).opts


def is_slimmable(config: str, opts=()) -> bool:
    cfg = slimmable_config(config, parse_opts(opts))
    return cfg.model.get("type") in ("SlimmableMaskRCNN", "SlimmableFasterRCNN")


def _load(config, checkpoint, opts):
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    return load_slimmable_detector(config, checkpoint, cfg_options=parse_opts(opts))


def export(src: str, dst: str, width: float, config: str, opts=()) -> dict:
    """Plain MMDetection detector at ``width`` (``dst``) and its config (``dst`` with ``.py``)."""
    cfg_path = export_config_path(dst, "mmdet")
    if os.path.abspath(cfg_path) == os.path.abspath(dst):
        raise ValueError(f"DST {dst} would be overwritten by its own config: give DST a .pth suffix")
    model, cfg = _load(config, src, opts)
    plain, written = export_detector(model, cfg, width, dst)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return {"weights": dst, "config": written, "width": canonical_width(width), "params_slimmable": count(model),
            "params_plain": count(plain)}


def calibrate(src: str, dst: str, config: str, widths, num_batches: int, opts=()) -> dict:
    """Calibrate BN at ``widths`` on the config's training images; save the detector with per-width statistics."""
    if os.path.abspath(src) == os.path.abspath(dst):
        raise ValueError("DST must differ from SRC (the source checkpoint is never overwritten)")
    if num_batches <= 0:
        raise ValueError(f"--num-batches must be positive, got {num_batches}")
    model, cfg = _load(config, src, opts)
    for w in widths:  # a bad width fails before any image is read
        with width_ctx(model, w):
            pass
    from mmengine.registry import DATASETS
    from mmengine.runner import Runner

    from ..detection.calibration import capped_calibration_batches

    loader_cfg = dict(cfg.train_dataloader)
    dataset = loader_cfg["dataset"] = DATASETS.build(loader_cfg["dataset"])  # read once: counted, then loaded
    num_batches = capped_calibration_batches(num_batches, len(dataset), int(loader_cfg["batch_size"]),
                                             "train_dataloader",
                                             log=lambda msg: print_log(msg, logger="current", level=30))
    used = calibrate_widths(model, cfg, widths, num_batches, loader=Runner.build_dataloader(loader_cfg))
    save_slimmable_detector(model, dst, {"source": os.path.abspath(src)})
    return {"weights": dst, "widths": used}


class _TensorForward(nn.Module):
    """The detector's inference path on fixed data samples, as a module of tensors only (what fvcore traces)."""

    def __init__(self, model, data_samples):
        super().__init__()
        self.model, self.data_samples = model, data_samples

    def forward(self, inputs):
        return self.model._forward(inputs, self.data_samples)


def detector_gflops(model, batch) -> float:
    """fvcore GFLOPs of the whole detector (backbone, FPN, RPN, RoI heads) on one preprocessed test batch."""
    from fvcore.nn import FlopCountAnalysis

    with torch.no_grad():
        data = model.data_preprocessor(batch, False)
        return fvcore_total_gflops(FlopCountAnalysis(_TensorForward(model, data["data_samples"]), data["inputs"]))


def backbone_gflops(model, batch) -> float:
    from fvcore.nn import FlopCountAnalysis

    with torch.no_grad():
        return fvcore_total_gflops(FlopCountAnalysis(model.backbone, model.data_preprocessor(batch, False)["inputs"]))


def evaluate(checkpoint: str, config: str, widths, output_dir: str, opts=(), calibrate_batches: int = 0,
             profile: bool = True) -> list[dict]:
    """COCO box/mask AP of ONE slimmable checkpoint at each width, with whole-detector and backbone GFLOPs."""
    model, cfg = _load(config, checkpoint, opts)
    widths = prepare_widths(model, widths, checkpoint, output_dir, calibrate_batches,
                            calibrate=lambda missing: calibrate_widths(model, cfg, missing, calibrate_batches),
                            save=lambda path, meta: save_slimmable_detector(model, path, meta),
                            log=lambda msg: print_log(msg, logger="current"))
    results = evaluate_widths(model, cfg, sorted(widths, reverse=True))
    batch = next(data_batches(cfg.test_dataloader, batch_size=1)) if profile else None
    arch = f"resnet{cfg.model.backbone.get('depth', 50)}"
    rows = []
    for w, metrics in results.items():
        def pct(k, metrics=metrics):
            return 100 * metrics[k] if k in metrics else None

        row = width_row(w, arch, checkpoint, {"AP": pct("bbox_mAP"), "AP50": pct("bbox_mAP_50")},
                        {"AP": pct("segm_mAP"), "AP50": pct("segm_mAP_50")})
        if profile:
            with width_ctx(model, w):
                gflops = detector_gflops(model, batch), backbone_gflops(model, batch)
            add_cost(row, *gflops, model.data_preprocessor(batch, False)["inputs"].shape)
        rows.append(row)
    return rows


# -------------------------------------------------------------------------------------------------- demo
def demo(checkpoint: str, config: str, images, widths, opts=(), score_thresh: float = 0.5, runs: int = 3
         ) -> list[dict]:
    """Detections of ONE slimmable checkpoint on ``images`` at each width (``mmdet.apis.inference_detector``),
    drawn by MMDetection's ``DetLocalVisualizer``; the panels of :func:`us3l.d2.detector_tools.demo` (latency:
    median of ``runs`` calls of ``inference_detector``, its preprocessing included)."""
    import time

    import mmcv
    from mmdet.apis import inference_detector
    from mmdet.registry import VISUALIZERS
    from mmdet.utils import get_test_pipeline_cfg
    from mmengine.dataset import Compose

    model, cfg = _load(config, checkpoint, opts)
    widths = [canonical_width(w) for w in widths]
    for w in widths:  # every width refused before any image is read
        set_width(model, w)
        require_calibrated(model, w)
    visualizer = VISUALIZERS.build(dict(cfg.get("visualizer") or {"type": "DetLocalVisualizer"}, vis_backends=None,
                                        save_dir=None, name=f"us3l_demo_{id(model)}"))
    visualizer.dataset_meta = dict(cfg.test_dataloader.dataset.get("metainfo") or {})
    pipeline = Compose(get_test_pipeline_cfg(cfg))
    panels = []
    for path in images:
        rgb = mmcv.imread(path, channel_order="rgb")
        data = pipeline(dict(img_path=path, img_id=0))
        batch = {"inputs": [data["inputs"]], "data_samples": [data["data_samples"]]}
        for w in widths:
            set_width(model, w)
            times = []
            for _ in range(max(1, runs)):
                t0 = time.perf_counter()
                sample = inference_detector(model, path)
                times.append(1000 * (time.perf_counter() - t0))
            pred = sample.pred_instances
            keep = pred.scores >= score_thresh
            visualizer.add_datasample("panel", rgb, data_sample=sample, draw_gt=False, show=False,
                                      pred_score_thr=score_thresh)
            panels.append({"image": path, "width": w, "rgb": visualizer.get_image(),
                           "latency_ms": sorted(times)[len(times) // 2],
                           "gflops": detector_gflops(model, batch), "boxes": pred.bboxes[keep].tolist(),
                           "scores": pred.scores[keep].tolist(), "classes": pred.labels[keep].tolist()})
    return panels


# -------------------------------------------------------------------------------------------------- ONNX
def export_onnx(weights: str, config: str, dst: str, opts=(), opset: int = 17) -> dict:
    """The plain detector ``export`` wrote (``weights`` + its ``config``) as an ONNX graph that onnxruntime's CPU
    provider runs with standard operators only (:mod:`us3l.mmdet.onnx_export`)."""
    from . import onnx_export

    return onnx_export.export_onnx(weights, config, dst, parse_opts(opts), opset=opset)


def evaluate_onnx(onnx_path: str, config: str, opts=(), threads: int | None = None) -> dict:
    """COCO box / mask AP of an exported ONNX graph in onnxruntime on the plain ``config``'s test set, through the
    test loader and ``CocoMetric`` of :func:`evaluate`."""
    from . import onnx_export

    return onnx_export.evaluate_onnx(onnx_path, config, parse_opts(opts), threads=threads)


def deployed_latency_ms(weights: str, config: str, runtime: str = "torch", threads: int | None = None, runs: int = 10,
                        opts=(), onnx_path: str | None = None) -> float:
    """Median wall time of one test image through the deployed plain detector (``export``'s files; with
    ``runtime='onnxruntime'`` the ONNX graph of ``export_onnx``): ``test_step`` on the first test-loader batch,
    preprocessing and mask pasting included, in this process with ``threads`` CPU threads."""
    from ..profiling import median_call_ms, torch_threads
    from . import onnx_export

    model, cfg = onnx_export.load_plain_detector(weights, config, parse_opts(opts))
    batch = next(data_batches(cfg.test_dataloader, batch_size=1))
    if runtime == "onnxruntime":
        detector = onnx_export.OnnxDetector(onnx_path, threads)
        return median_call_ms(lambda: detector.test_step(batch), runs)
    if runtime != "torch":
        raise ValueError(f"runtime {runtime!r}: choose torch or onnxruntime")
    with torch_threads(threads), torch.no_grad():
        return median_call_ms(lambda: model.test_step(batch), runs)
