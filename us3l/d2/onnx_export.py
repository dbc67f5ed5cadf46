"""ONNX deployment of a plain Detectron2 Faster / Mask R-CNN (what ``tools/export_detector.py`` writes), run by
onnxruntime's CPU provider with standard ONNX operators only.

Detectron2's own route, ``detectron2.export.TracingAdapter``, cannot be imported on torch 2.x (the package
imports caffe2), and its post-processed outputs export to a graph onnxruntime refuses (an int32 / int64
``Slice`` in mask pasting). So the graph traces what ``TracingAdapter`` would: ``GeneralizedRCNN.inference`` on
one image with ``do_postprocess=False``. Detectron2 wrote its inference to be traceable (proposal counts, image
sizes and anchor grids are tensors while tracing; torchvision's ``batched_nms`` takes its one-NMS path; pooling
uses ``index_put_``), its ``ROIAlignV2`` is torchvision's aligned ``roi_align`` (ONNX ``RoiAlign`` half-pixel, opset
>= 16) and its NMS is torchvision's ``nms`` (ONNX ``NonMaxSuppression``).

* input ``image``: float32 ``[3, H, W]``, the test mapper's resized image in ``INPUT.FORMAT`` (the ``"image"``
  of a Detectron2 input dict); the graph normalises and pads it (``size_divisibility``) as the model does.
* outputs ``boxes [N, 4]`` (resized image pixels), ``scores [N]``, ``classes [N]`` (int64) and for Mask R-CNN
  ``masks [N, 1, M, M]``: each detection's mask probabilities of its class, not pasted.
  :class:`OnnxDetector` then runs Detectron2's own ``detector_postprocess`` (rescale to the original image,
  ``paste_masks_in_image``), as ``GeneralizedRCNN`` does, so ``COCOEvaluator`` scores it as the PyTorch model.

The test-time settings (``MODEL.RPN.*_TEST``, ``MODEL.ROI_HEADS.{SCORE,NMS}_THRESH_TEST``,
``TEST.DETECTIONS_PER_IMAGE``) are constants of the graph, taken from the config at export.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn

from ..detection.onnx_graph import INPUT, check_destination, check_opset, graph_nodes, ort_session, write_graph
from .config import load_config

INPUTS = [INPUT]
BOX_OUTPUTS = ["boxes", "scores", "classes"]
MASK_OUTPUT = "masks"


def _refuse(config: str, what: str) -> ValueError:
    return ValueError(f"{config}: {what}; ONNX export covers Detectron2's plain GeneralizedRCNN with RPN and "
                      "StandardROIHeads (FPN, ROIAlignV2 pooling, box and optional mask head)")


def check_supported(model, cfg, config: str = "the config") -> None:
    """Refuse, with one line naming the part, any model the traced graph would not reproduce."""
    from detectron2.layers import ROIAlign
    from detectron2.modeling.meta_arch import GeneralizedRCNN
    from detectron2.modeling.proposal_generator import RPN
    from detectron2.modeling.roi_heads import StandardROIHeads

    if type(model) is not GeneralizedRCNN:
        raise _refuse(config, f"META_ARCHITECTURE {type(model).__name__} is not supported")
    if type(model.proposal_generator) is not RPN or type(model.roi_heads) is not StandardROIHeads:
        raise _refuse(config, f"{type(model.proposal_generator).__name__} / {type(model.roi_heads).__name__} "
                              "is not RPN / StandardROIHeads")
    heads = model.roi_heads
    if heads.keypoint_on:
        raise _refuse(config, "the keypoint head is not supported")
    poolers = [("ROI_BOX_HEAD", heads.box_pooler)] + ([("ROI_MASK_HEAD", heads.mask_pooler)] if heads.mask_on else [])
    for where, pooler in poolers:
        for layer in pooler.level_poolers:
            if not isinstance(layer, ROIAlign) or not layer.aligned:
                raise _refuse(config, f"MODEL.{where}.POOLER_TYPE {getattr(cfg.MODEL, where).POOLER_TYPE} pools "
                                      f"with {layer!r}, not ROIAlignV2 (aligned)")


def load_plain_detector(weights: str, config: str, opts: Sequence[str] = ()):
    """``(model in eval mode, cfg)``: the plain detector of ``config`` with every tensor of ``weights`` (Detectron2's
    checkpointer with the project's strict, weights-only reading)."""
    from detectron2.modeling import build_model

    from .checkpoint import US3LCheckpointer
    from .slimmable_backbone import is_slimmable_detector_cfg

    for path, what in ((config, "config"), (weights, "weights")):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{what} not found: {path}")
    cfg = load_config(config, list(opts) + ["MODEL.DEVICE", "cpu"])
    if is_slimmable_detector_cfg(cfg):  # before building it
        raise ValueError(f"{config}: MODEL.BACKBONE.NAME {cfg.MODEL.BACKBONE.NAME} is the slimmable detector; export "
                         "one width as a plain detector first (tools/export_detector.py SRC DST.pth --width W "
                         "--config CFG) and give DST.pth with the DST.yaml written beside it")
    model = build_model(cfg).eval()
    check_supported(model, cfg, config)
    US3LCheckpointer(model, cfg=cfg).load(weights)
    return model, cfg


class DetectorGraph(nn.Module):
    """One image through the plain detector's ``inference(do_postprocess=False)``, tensors out (traced to ONNX)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.with_mask = bool(model.roi_heads.mask_on)

    def forward(self, image: torch.Tensor):
        inst = self.model.inference([{"image": image}], do_postprocess=False)[0]
        out = (inst.pred_boxes.tensor, inst.scores, inst.pred_classes.to(torch.int64))
        return (*out, inst.pred_masks) if self.with_mask else out


def _example_image(cfg) -> torch.Tensor:
    """What the trace runs on: noise at the test resize (short side ``MIN_SIZE_TEST``), a size that is not a
    multiple of the pad divisor."""
    short = int(cfg.INPUT.MIN_SIZE_TEST)
    long = min(int(cfg.INPUT.MAX_SIZE_TEST), short * 4 // 3)
    g = torch.Generator().manual_seed(0)
    return torch.rand(3, short - 3, long - 5, generator=g) * 255


def _check_nms_loop(proto, cfg) -> None:
    """Refuse a graph that kept Detectron2's per-class NMS loop for only some classes. ``batched_nms`` loops over
    ``torch.unique(classes)`` at 40000 candidate boxes or more, and the trace keeps the classes of its example
    image. At ``SCORE_THRESH_TEST 0`` every class is a candidate, so the loop covers them all."""
    count = sum(n.op_type == "NonMaxSuppression" for n in graph_nodes(proto.graph))
    score = float(cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST)
    if count > 2 and score > 0:
        raise ValueError(f"the traced graph has {count} NMS nodes: Detectron2's per-class NMS loop over the example "
                         f"image's classes at SCORE_THRESH_TEST {score:g}; export with MODEL.ROI_HEADS."
                         "SCORE_THRESH_TEST 0 (then every class is in the loop) or with fewer ROI_HEADS / RPN "
                         "proposals")


def export_onnx(weights: str, config: str, dst: str, opts: Sequence[str] = (), opset: int = 17) -> dict:
    """Write the plain detector (``weights`` + the ``config`` that ``tools/export_detector.py`` wrote beside them,
    ``opts`` as KEY VALUE overrides) to ``dst`` as ONNX with dynamic H / W, check it (the contract of
    :func:`us3l.detection.onnx_graph.check_onnx`, no per-class NMS loop) and run it once in onnxruntime. A graph that
    breaks the contract is removed."""
    opset = check_opset(opset, "Detectron2")
    check_destination(dst, [weights, config])
    model, cfg = load_plain_detector(weights, config, opts)
    graph = DetectorGraph(model).eval()
    outputs = BOX_OUTPUTS + ([MASK_OUTPUT] if graph.with_mask else [])
    example = _example_image(cfg)
    props = {"us3l.framework": "d2", "us3l.weights": os.path.basename(weights),
             "us3l.config": os.path.basename(config),
             "us3l.input": f"float32 [3,H,W]: the test mapper's resized image in {cfg.INPUT.FORMAT}, before "
                           "normalisation and padding", "us3l.boxes": "pixels of the resized image"}
    checked = write_graph(graph, example, dst, outputs, {INPUT: {1: "height", 2: "width"},
                                                          **{k: {0: "detections"} for k in outputs}}, opset, props,
                          checks=[lambda proto: _check_nms_loop(proto, cfg),
                                  lambda proto: OnnxDetector(dst).raw(example)])  # runs: run-time shapes hold
    return {"onnx": dst, "opset": opset, "inputs": list(INPUTS), "outputs": outputs, "mask": graph.with_mask,
            "weights": weights, "config": config, "ops": checked["ops"]}


class OnnxDetector:
    """An exported graph in onnxruntime (CPU) called as a Detectron2 model in eval mode: a list of input dicts
    (``"image"``, optional ``"height"`` / ``"width"`` of the original image) in, ``[{"instances": Instances}]``
    out, after Detectron2's ``detector_postprocess``. ``inference_on_dataset`` takes it as a model."""

    def __init__(self, onnx_path: str, threads: int | None = None):
        self.session = ort_session(onnx_path, threads)
        self.outputs = [o.name for o in self.session.get_outputs()]
        if self.outputs[:3] != BOX_OUTPUTS:
            raise ValueError(f"{onnx_path}: outputs {self.outputs} are not those of an exported Detectron2 detector "
                             f"({BOX_OUTPUTS} [+ {MASK_OUTPUT!r}])")
        self.with_mask = MASK_OUTPUT in self.outputs

    def raw(self, image) -> dict[str, np.ndarray]:
        """The graph's outputs for one ``[3, H, W]`` image."""
        x = torch.as_tensor(image).to(torch.float32).contiguous().numpy()
        return dict(zip(self.outputs, self.session.run(self.outputs, {INPUTS[0]: x})))

    def instances(self, image, height: int | None = None, width: int | None = None):
        """Detectron2 ``Instances`` of one image in the original image's pixels (masks pasted, thresholded at 0.5
        as ``GeneralizedRCNN`` does)."""
        from detectron2.modeling.postprocessing import detector_postprocess
        from detectron2.structures import Boxes, Instances

        out = {k: torch.from_numpy(v) for k, v in self.raw(image).items()}
        size = tuple(int(s) for s in torch.as_tensor(image).shape[-2:])
        inst = Instances(size, pred_boxes=Boxes(out["boxes"]), scores=out["scores"], pred_classes=out["classes"])
        if self.with_mask:
            inst.pred_masks = out[MASK_OUTPUT]
        return detector_postprocess(inst, height or size[0], width or size[1])

    def __call__(self, batched_inputs) -> list[dict]:
        return [{"instances": self.instances(x["image"], x.get("height"), x.get("width"))} for x in batched_inputs]


def evaluate_onnx(onnx_path: str, config: str, opts: Sequence[str] = (), threads: int | None = None) -> dict:
    """COCO box (and mask) AP of the graph on ``config``'s first test set: Detectron2's test loader (the project's
    test mapper), ``inference_on_dataset`` and ``COCOEvaluator`` (pycocotools), onnxruntime in place of the
    model (datasets registered as for every Detectron2 tool: importing :mod:`us3l.d2`). Nothing is written."""
    import math

    from detectron2.evaluation import COCOEvaluator, inference_on_dataset

    from .evaluation import build_test_loader

    if not os.path.isfile(config):
        raise FileNotFoundError(f"config not found: {config}")
    cfg = load_config(config, list(opts) + ["MODEL.DEVICE", "cpu", "TEST.IMS_PER_BATCH", "1"])
    detector = OnnxDetector(onnx_path, threads)
    name = cfg.DATASETS.TEST[0]
    evaluator = COCOEvaluator(name, output_dir=None, use_fast_impl=False)
    results = inference_on_dataset(detector, build_test_loader(cfg, name), evaluator)

    def ap(task, key):
        v = results.get(task, {}).get(key)
        return None if v is None or math.isnan(v) else float(v)

    return {"onnx": onnx_path, "box_AP": ap("bbox", "AP"), "box_AP50": ap("bbox", "AP50"),
            "mask_AP": ap("segm", "AP"), "mask_AP50": ap("segm", "AP50"), "metrics": dict(results)}
