"""Detectron2 backend of the slimmable-detector tools (contract: :mod:`us3l.detection.backends`).

Build the slimmable detector from a config, load ONE checkpoint with :class:`SlimmableDetectorCheckpointer`,
then export a plain detector at a width, calibrate BN at widths, or COCO-evaluate at each width.
Files written here hold tensors and plain metadata only (``torch.load(weights_only=True)`` reads them).
"""
from __future__ import annotations

import logging
import os

import torch

from ..checkpoint import atomic_save
from ..detection import fvcore_total_gflops, require_calibrated
from ..detection.backends import export_config_path
from ..detection.calibration import prepare_widths
from ..detection.width_rows import add_cost, width_row
from ..ops.width_state import canonical_width
from ..width import set_width
from ..width import width as width_ctx
from .config import load_config
from .evaluation import evaluate_widths, prepare_for_width, unwrap
from .export import export_plain_detector
from .slimmable_backbone import is_slimmable_detector_cfg
from .slimmable_checkpoint import SlimmableDetectorCheckpointer

logger = logging.getLogger("detectron2.us3l.detector_tools")
META = "__us3l_detector__"


def is_slimmable(config: str, opts=()) -> bool:
    return is_slimmable_detector_cfg(load_config(config, opts))


def load_slimmable_detector(config: str, weights: str, opts=(), device: str = "cpu"):
    """``(cfg, model)``: the slimmable detector of ``config`` with ``weights`` (eval mode, at WIDTH_MULT)."""
    from detectron2.modeling import build_model

    from .config import us3l_width

    if not os.path.isfile(weights):
        raise FileNotFoundError(f"checkpoint not found: {weights}")
    cfg = load_config(config, list(opts) + ["MODEL.DEVICE", device, "MODEL.WEIGHTS", weights])
    if not is_slimmable_detector_cfg(cfg):
        raise ValueError(f"{config} is not a slimmable detector config (MODEL.BACKBONE.NAME "
                         f"{cfg.MODEL.BACKBONE.NAME}); use a *_slimmable_*.yaml config")
    model = build_model(cfg)
    set_width(model, us3l_width(cfg))
    SlimmableDetectorCheckpointer(model, cfg=cfg).load(weights, checkpointables=[])
    return model.eval(), cfg


def save_slimmable_detector(model, path: str, meta: dict | None = None) -> None:
    """Write the detector's weights (per-width BN statistics included) where Detectron2's and our loaders read
    them (``MODEL.WEIGHTS``, ``DefaultPredictor``); ``meta``: plain data kept beside them."""
    _save_detector(model, path, dict(meta or {}))


def _save_detector(model, path: str, meta: dict) -> None:
    atomic_save({"model": {k: v.detach().cpu() for k, v in model.state_dict().items()}, META: meta}, path)


# ------------------------------------------------------------------------------------------------ export
def export(src: str, dst: str, width: float, config: str, opts=()) -> dict:
    """Write a plain Detectron2 detector at ``width`` (``dst``) and its config (``dst`` with ``.yaml``)."""
    model, cfg = load_slimmable_detector(config, src, opts)
    w = set_width(model, width)
    require_calibrated(model, w)
    plain, pcfg = export_plain_detector(model, cfg, w)
    cfg_path = export_config_path(dst, "d2")
    if os.path.abspath(cfg_path) == os.path.abspath(dst):
        raise ValueError(f"DST {dst} would be overwritten by its own config: give DST a .pth suffix")
    pcfg.MODEL.WEIGHTS = os.path.abspath(dst)
    pcfg.OUTPUT_DIR = os.path.dirname(os.path.abspath(dst))
    _save_detector(plain, dst, {"width": w, "source": os.path.abspath(src), "plain": True})
    with open(cfg_path, "w") as f:
        f.write(f"# Plain Detectron2 detector exported by tools/export_detector.py from {os.path.abspath(src)}\n"
                f"# at width {w}: no slimmable code, channel counts written below.\n")
        f.write(pcfg.dump())
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return {"weights": dst, "config": cfg_path, "width": w, "params_slimmable": count(model),
            "params_plain": count(plain)}


# ------------------------------------------------------------------------------------------- calibration
def _train_loader(cfg, dataset=None):
    """The config's training loader in this process (``dataset``: its records, when already read)."""
    from detectron2.data import build_detection_train_loader

    c = cfg.clone()
    c.defrost()
    c.DATALOADER.NUM_WORKERS = 0
    return build_detection_train_loader(c) if dataset is None else build_detection_train_loader(c, dataset=dataset)


def calibrate_widths(model, cfg, widths, num_batches: int, loader=None) -> dict[float, int]:
    """Calibrate the BN statistics of a slimmable detector at ``widths`` on ``num_batches`` batches of the
    config's training set (or ``loader``, a Detectron2 training loader); ``{width: batches used}``."""
    from .sandwich import calibrate_d2_detector

    if num_batches <= 0:
        raise ValueError(f"--num-batches must be positive, got {num_batches}")
    return calibrate_d2_detector(model, loader if loader is not None else _train_loader(cfg),
                                 [canonical_width(w) for w in widths], num_batches)


def calibrate(src: str, dst: str, config: str, widths, num_batches: int, opts=()) -> dict:
    """Calibrate BN at ``widths`` on the config's training set; save the detector with per-width statistics."""
    if os.path.abspath(src) == os.path.abspath(dst):
        raise ValueError("DST must differ from SRC (the source checkpoint is never overwritten)")
    model, cfg = load_slimmable_detector(config, src, opts)
    from ..bn_calibration import calibrated_widths

    for w in widths:  # a bad width fails before any image is read
        with width_ctx(model, w):
            pass
    from detectron2.data import get_detection_dataset_dicts

    from ..detection.calibration import capped_calibration_batches

    images = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)
    num_batches = capped_calibration_batches(num_batches, len(images), cfg.SOLVER.IMS_PER_BATCH,
                                             f"DATASETS.TRAIN {list(cfg.DATASETS.TRAIN)}", log=logger.warning)
    used = calibrate_widths(model, cfg, widths, num_batches, loader=_train_loader(cfg, images))  # read once
    _save_detector(model, dst, {"source": os.path.abspath(src), "calibrated_widths": calibrated_widths(model)})
    return {"weights": dst, "widths": used}


# -------------------------------------------------------------------------------------------- evaluation
def _first_test_image(cfg):
    from detectron2.data import build_detection_test_loader

    from .resize import test_mapper

    loader = build_detection_test_loader(cfg, cfg.DATASETS.TEST[0], mapper=test_mapper(cfg))
    return next(iter(loader))


class _TracedInference(torch.nn.Module):
    """A detector's inference on one image with tensor outputs, as fvcore's tracer needs them.

    (Detectron2's own ``utils.analysis`` imports ``detectron2.export``, which needs caffe2.)
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image):
        inst = self.model.inference([{"image": image}], do_postprocess=False)[0]
        out = [inst.pred_boxes.tensor, inst.scores, inst.pred_classes]
        if inst.has("pred_masks"):
            out.append(inst.pred_masks)
        return tuple(out)


def detector_gflops(model, batch) -> float:
    """fvcore GFLOPs of the whole detector (inference: backbone, FPN, RPN, ROI heads) on ``batch[0]`` at its width."""
    import warnings

    from fvcore.nn import FlopCountAnalysis

    net = unwrap(model)
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about data-dependent control flow
            return fvcore_total_gflops(FlopCountAnalysis(_TracedInference(net), (batch[0]["image"],)))
    finally:
        net.train(was_training)


def backbone_gflops(model, batch) -> float:
    from fvcore.nn import FlopCountAnalysis

    net = unwrap(model)
    with torch.no_grad():
        images = net.preprocess_image(batch).tensor
        return fvcore_total_gflops(FlopCountAnalysis(net.backbone.bottom_up, images))


def evaluate(checkpoint: str, config: str, widths, output_dir: str, opts=(), calibrate_batches: int = 0,
             profile: bool = True) -> list[dict]:
    """COCO box/mask AP of ONE slimmable checkpoint at each width, with whole-detector and backbone GFLOPs."""
    from ..bn_calibration import calibrated_widths

    model, cfg = load_slimmable_detector(config, checkpoint, opts)
    widths = prepare_widths(
        model, widths, checkpoint, output_dir, calibrate_batches,
        calibrate=lambda missing: calibrate_widths(model, cfg, missing, calibrate_batches),
        save=lambda path, meta: _save_detector(model, path, dict(meta, calibrated_widths=calibrated_widths(model))),
        log=logger.info)
    batch = _first_test_image(cfg) if profile else None
    arch = f"resnet{cfg.MODEL.RESNETS.DEPTH}"
    rows = []
    for w, results in evaluate_widths(model, cfg, widths, output_dir).items():
        row = width_row(w, arch, checkpoint, results.get("bbox"), results.get("segm"))
        if profile:
            set_width(model, w)
            add_cost(row, detector_gflops(model, batch), backbone_gflops(model, batch), batch[0]["image"].shape)
        rows.append(row)
    return rows


# -------------------------------------------------------------------------------------------------- demo
def demo(checkpoint: str, config: str, images, widths, opts=(), score_thresh: float = 0.5, runs: int = 3
         ) -> list[dict]:
    """Detections of ONE slimmable checkpoint on ``images`` at each width, drawn by Detectron2's ``Visualizer``
    (class names from the test set's metadata): one panel per (image, width) with ``rgb`` (the drawing),
    ``boxes`` / ``scores`` / ``classes`` (score >= ``score_thresh``), ``latency_ms`` (median of ``runs`` forward
    passes, preprocessing excluded) and ``gflops`` (whole detector, fvcore, on that image)."""
    import time

    from detectron2.data import MetadataCatalog
    from detectron2.data.detection_utils import read_image
    from detectron2.utils.visualizer import Visualizer

    from .resize import test_resize

    model, cfg = load_slimmable_detector(config, checkpoint, opts)
    widths = [canonical_width(w) for w in widths]
    for w in widths:  # every width refused before any image is read
        prepare_for_width(model, w)
    meta = MetadataCatalog.get(cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "__us3l_demo")
    resize = test_resize(cfg)
    panels = []
    for path in images:
        rgb = read_image(path, format="RGB")
        image = rgb if cfg.INPUT.FORMAT == "RGB" else rgb[:, :, ::-1]
        resized = resize.get_transform(image).apply_image(image)
        inputs = [{"image": torch.as_tensor(resized.astype("float32").transpose(2, 0, 1)),
                   "height": rgb.shape[0], "width": rgb.shape[1]}]
        for w in widths:
            set_width(model, w)
            times = []
            with torch.no_grad():
                for _ in range(max(1, runs)):
                    t0 = time.perf_counter()
                    inst = model(inputs)[0]["instances"].to("cpu")
                    times.append(1000 * (time.perf_counter() - t0))
            inst = inst[inst.scores >= score_thresh]
            drawn = Visualizer(rgb, metadata=meta).draw_instance_predictions(inst).get_image()
            panels.append({"image": path, "width": w, "rgb": drawn, "latency_ms": sorted(times)[len(times) // 2],
                           "gflops": detector_gflops(model, inputs), "boxes": inst.pred_boxes.tensor.tolist(),
                           "scores": inst.scores.tolist(), "classes": inst.pred_classes.tolist()})
    return panels


# -------------------------------------------------------------------------------------------------- ONNX
def export_onnx(weights: str, config: str, dst: str, opts=(), opset: int = 17) -> dict:
    """The plain detector ``export`` wrote (``weights`` + its ``config``) as an ONNX graph that onnxruntime's CPU
    provider runs with standard operators only (:mod:`us3l.d2.onnx_export`)."""
    from . import onnx_export

    return onnx_export.export_onnx(weights, config, dst, list(opts), opset=opset)


def evaluate_onnx(onnx_path: str, config: str, opts=(), threads: int | None = None) -> dict:
    """COCO box / mask AP of an exported ONNX graph in onnxruntime on the plain ``config``'s test set
    (Detectron2's test loader and ``COCOEvaluator``)."""
    from . import onnx_export

    return onnx_export.evaluate_onnx(onnx_path, config, list(opts), threads=threads)


def deployed_latency_ms(weights: str, config: str, runtime: str = "torch", threads: int | None = None, runs: int = 10,
                        opts=(), onnx_path: str | None = None) -> float:
    """Median wall time of one test image through the deployed plain detector (``export``'s files; with
    ``runtime='onnxruntime'`` the ONNX graph of ``export_onnx``): the model's call on the first test-loader input
    (Detectron2's test mapper has resized it), normalisation, padding and mask pasting included, in this process
    with ``threads`` CPU threads."""
    from detectron2.modeling import build_model

    from ..profiling import median_call_ms, torch_threads
    from .checkpoint import US3LCheckpointer

    for path, what in ((weights, "weights"), (config, "config")):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{what} not found: {path}")
    cfg = load_config(config, list(opts))
    inputs = _first_test_image(cfg)
    if runtime == "onnxruntime":
        from .onnx_export import OnnxDetector

        detector = OnnxDetector(onnx_path, threads)
        return median_call_ms(lambda: detector(inputs), runs)
    if runtime != "torch":
        raise ValueError(f"runtime {runtime!r}: choose torch or onnxruntime")
    model = build_model(cfg).eval()
    US3LCheckpointer(model, cfg=cfg).load(weights)
    with torch_threads(threads), torch.no_grad():
        return median_call_ms(lambda: model(inputs), runs)
