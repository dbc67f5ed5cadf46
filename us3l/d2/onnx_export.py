"""ONNX deployment of a PLAIN Detectron2 detector (Faster / Mask R-CNN with FPN, as ``tools/export_detector.py``
writes it), run by onnxruntime's CPU provider with standard ONNX operators only (no custom op).

The graph (:func:`export_onnx`):

    image   float32 [3, H, W]: the test mapper's image (``INPUT.FORMAT`` channel order, 0-255, any H and W)
    boxes   float32 [N, 4] in the coordinates of ``image``; scores float32 [N]; classes int64 [N]
    masks   float32 [N, 1, M, M] (Mask R-CNN): per-RoI probabilities of the predicted class

Normalisation (``PIXEL_MEAN`` / ``PIXEL_STD``), padding, RPN, NMS and RoIAlign are in the graph. Detectron2's
post-processing (boxes rescaled to the original image, masks pasted) is not: with it in the graph the legacy
exporter writes a Slice that onnxruntime refuses, so :class:`OnnxDetector` runs Detectron2's own
``detector_postprocess`` on the outputs and returns what ``GeneralizedRCNN`` returns, for Detectron2's evaluators.

Opset >= 16: Detectron2's ``ROIAlignV2`` is aligned (a half-pixel shift); torchvision's exporter drops the shift
below opset 16 (only a warning), and onnxruntime's CPU RoiAlign applies it only when the graph writes
``coordinate_transformation_mode``. The export checks each RoiAlign node against the model's poolers.
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from detectron2.layers import ROIAlign
from detectron2.modeling import GeneralizedRCNN, StandardROIHeads, build_model
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers, fast_rcnn_inference_single_image
from detectron2.structures import Boxes, Instances
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

from .checkpoint import US3LCheckpointer
from .config import load_config
from .slimmable import is_slimmable_detector_cfg

INPUTS = ["image"]
BOX_OUTPUTS = ["boxes", "scores", "classes"]
MASK_OUTPUT = "masks"
MIN_OPSET = 16
DEFAULT_DOMAINS = ("", "ai.onnx")
_ORT_LOAD_ERRORS = (ort_errors.InvalidProtobuf, ort_errors.InvalidGraph, ort_errors.Fail, ort_errors.NoSuchFile,
                    ort_errors.NotImplemented)


class OnnxExportCheckError(RuntimeError):
    """The written graph failed a check (a custom op, a RoiAlign without its shift, outputs unlike PyTorch's)."""


# --------------------------------------------------------------------------------------------------- the model
def load_plain_detector(weights: str, config: str, opts=()):
    """``(model, cfg)``: the plain detector of ``config`` (+ ``KEY VALUE`` opts) on the CPU, eval mode, with
    ``weights`` loaded by :class:`US3LCheckpointer` (every key exact, read safely)."""
    for path, what in ((config, "config"), (weights, "weights")):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{what} not found: {path}")
    cfg = load_config(config, list(opts) + ["MODEL.DEVICE", "cpu"])
    if is_slimmable_detector_cfg(cfg):
        raise ValueError(f"{config} is a slimmable detector config: export one width first "
                         "(tools/export_detector.py SRC DST.pth --width W) and pass the config it writes (DST.yaml)")
    model = build_model(cfg)
    _check_supported(model, config)
    US3LCheckpointer(model, cfg=cfg).load(weights, checkpointables=[])
    return model.eval(), cfg


def _check_supported(model, config: str) -> None:
    """What :class:`_InferenceGraph` runs: Faster / Mask R-CNN, Detectron2's own ROI heads and box predictor."""
    heads = getattr(model, "roi_heads", None)
    if (not isinstance(model, GeneralizedRCNN) or model.proposal_generator is None
            or type(heads) is not StandardROIHeads or heads.keypoint_on
            or type(heads.box_predictor) is not FastRCNNOutputLayers
            or getattr(heads.box_predictor, "use_sigmoid_ce", False)):
        raise ValueError(f"{config}: ONNX export supports Faster / Mask R-CNN (GeneralizedRCNN with an RPN, "
                         "StandardROIHeads, FastRCNNOutputLayers with softmax scores, no keypoints), got "
                         f"{type(model).__name__} with {type(heads).__name__}")
    if heads.mask_on and heads.mask_pooler is None:
        raise ValueError(f"{config}: the mask head must pool its features (ROI_MASK_HEAD.POOLER_TYPE)")


class _InferenceGraph(torch.nn.Module):
    """One image in, the detector's raw per-RoI outputs out (tensors only, as the tracer needs them).

    Detectron2's ``inference(do_postprocess=False)`` splits box scores, boxes and masks per image by Python ints
    (``len(proposals)``), which tracing freezes to the traced image's counts (a graph that fails on any image with
    fewer proposals); with one image there is nothing to split, so the box and mask branches are run here from the
    same modules and Detectron2's ``fast_rcnn_inference_single_image``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image):
        m = self.model
        images = m.preprocess_image([{"image": image}])
        features = m.backbone(images.tensor)
        proposals, _ = m.proposal_generator(images, features, None)
        heads, boxes = m.roi_heads, proposals[0].proposal_boxes
        pred = heads.box_predictor
        logits, deltas = pred(heads.box_head(heads.box_pooler([features[f] for f in heads.box_in_features], [boxes])))
        inst, _ = fast_rcnn_inference_single_image(  # predict_boxes / predict_probs without their split
            pred.box2box_transform.apply_deltas(deltas, boxes.tensor), F.softmax(logits, dim=-1),
            images.image_sizes[0], pred.test_score_thresh, pred.test_nms_thresh, pred.test_topk_per_image)
        out = (inst.pred_boxes.tensor, inst.scores, inst.pred_classes)
        if not heads.mask_on:
            return out
        pooled = heads.mask_pooler([features[f] for f in heads.mask_in_features], [inst.pred_boxes])
        logits = heads.mask_head.layers(pooled)
        if logits.shape[1] > 1:  # class-specific masks: the predicted class's (mask_rcnn_inference)
            logits = logits[torch.arange(logits.shape[0]), inst.pred_classes][:, None]
        return out + (logits.sigmoid(),)


def _noise_image(cfg, shape=None, seed: int = 0) -> torch.Tensor:
    """A fixed noise image, by default of the config's test size (the graph does not depend on the traced image:
    :func:`export_onnx` checks it on images of other sizes)."""
    size = int(cfg.INPUT.MIN_SIZE_TEST) or 512
    h, w = shape or (size, size)
    return torch.randint(0, 256, (3, h, w), generator=torch.Generator().manual_seed(seed)).float()


# -------------------------------------------------------------------------------------------------- export
def export_onnx(weights: str, config: str, dst: str, opts=(), opset: int = 17) -> dict:
    """Export the plain detector (``weights`` + the ``config`` that ``tools/export_detector.py`` wrote) to ``dst``.

    ``dst`` appears only once the graph passed :func:`check_onnx` and reproduced PyTorch's outputs in onnxruntime
    on noise images of three sizes (a graph frozen to the traced image's detection or proposal counts fails there).
    Returns ``{"onnx", "opset", "inputs", "outputs", "mask", "width", "input_format", "ops", "max_abs_diff"}``."""
    if int(opset) < MIN_OPSET:
        raise ValueError(f"opset {opset}: ONNX export needs opset >= {MIN_OPSET}, below it RoiAlign loses the "
                         "half-pixel shift of Detectron2's aligned ROIAlignV2")
    if os.path.abspath(dst) in (os.path.abspath(weights), os.path.abspath(config)):
        raise ValueError(f"DST {dst} would overwrite the detector's weights or config: give it an .onnx suffix")
    model, cfg = load_plain_detector(weights, config, opts)
    graph = _InferenceGraph(model).eval()
    outputs = BOX_OUTPUTS + ([MASK_OUTPUT] if model.roi_heads.mask_on else [])
    tmp = f"{dst}.tmp{os.getpid()}"
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # data-dependent shapes: exported as ops
            warnings.filterwarnings("ignore", message="Exporting aten::index operator", category=UserWarning)
            torch.onnx.export(graph, (_noise_image(cfg),), tmp, dynamo=False, opset_version=int(opset),
                              input_names=INPUTS, output_names=outputs,
                              dynamic_axes={"image": {1: "height", 2: "width"},
                                            **{n: {0: "detections"} for n in outputs}})
        proto = onnx.load(tmp)
        onnx.helper.set_model_props(proto, {"us3l.input_format": cfg.INPUT.FORMAT,
                                            "us3l.width": str(cfg.MODEL.US3L.WIDTH_MULT),
                                            "us3l.weights": os.path.abspath(weights)})
        onnx.save(proto, tmp)
        ops = check_onnx(tmp, _pooler_modes(model))
        size = int(cfg.INPUT.MIN_SIZE_TEST) or 512
        checks = [_noise_image(cfg), _noise_image(cfg, (size + 16, size - 8), 1), _noise_image(cfg, (32, 40), 2)]
        diff = _compare_with_pytorch(OnnxDetector(tmp, threads=torch.get_num_threads()), graph, checks)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return {"onnx": dst, "opset": int(opset), "inputs": list(INPUTS), "outputs": outputs,
            "mask": bool(model.roi_heads.mask_on), "width": float(cfg.MODEL.US3L.WIDTH_MULT),
            "input_format": cfg.INPUT.FORMAT, "ops": ops, "max_abs_diff": diff}


def _pooler_modes(model) -> list[str]:
    """The ``coordinate_transformation_mode`` each of the model's RoIAlign poolers must have in the graph."""
    return sorted("half_pixel" if m.aligned else "output_half_pixel"
                  for m in model.modules() if isinstance(m, ROIAlign))


def graph_nodes(graph: onnx.GraphProto):
    """Every node of ``graph``, those of subgraphs (``If`` branches, loops) included."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from graph_nodes(attr.g)
            for sub in attr.graphs:
                yield from graph_nodes(sub)


def roi_align_modes(proto: onnx.ModelProto) -> list[str | None]:
    """``coordinate_transformation_mode`` of each RoiAlign node as WRITTEN (None: absent, which onnxruntime's CPU
    kernel reads as no half-pixel shift)."""
    modes = []
    for node in graph_nodes(proto.graph):
        if node.op_type == "RoiAlign":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            mode = attrs.get("coordinate_transformation_mode")
            modes.append(mode.decode() if isinstance(mode, bytes) else mode)
    return modes


def check_onnx(path: str, roi_align: list[str] | None = None) -> list[str]:
    """Check an exported graph: valid ONNX, default-domain operators only, the RoiAlign nodes' written modes as
    ``roi_align`` lists them (sorted; default: every one ``half_pixel``, Detectron2's ROIAlignV2), and
    onnxruntime's CPU provider loads it. Returns the operator types."""
    proto = onnx.load(path)
    onnx.checker.check_model(proto)
    nodes = list(graph_nodes(proto.graph))
    custom = sorted({f"{n.domain}::{n.op_type}" for n in nodes if n.domain not in DEFAULT_DOMAINS})
    if custom or any(o.domain not in DEFAULT_DOMAINS for o in proto.opset_import):
        raise OnnxExportCheckError(f"{path}: operators outside the default ONNX domain: {custom}")
    modes = roi_align_modes(proto)
    if sorted(modes, key=str) != (list(roi_align) if roi_align is not None else ["half_pixel"] * len(modes)):
        raise OnnxExportCheckError(f"{path}: RoiAlign coordinate_transformation_mode {modes}, the model's poolers "
                                   f"need {roi_align} (export at opset >= {MIN_OPSET})")
    OnnxDetector(path, threads=torch.get_num_threads())  # PyTorch's thread count (OMP_NUM_THREADS), not all cores
    return sorted({n.op_type for n in nodes})


def match_detections(ref: dict, got: dict, tol: float = 1e-3, tie: float = 1e-5,
                     score_thresh: float | None = None) -> dict:
    """Pair the detections of two runs of one detector (PyTorch and onnxruntime), whatever their order.

    ``ref`` / ``got``: ``{"boxes" [N, 4], "scores" [N], "classes" [N], optional "masks"}`` arrays. A pair has the
    same class, and scores and boxes within ``tol`` (``np.isclose``, relative and absolute). The two runs differ in
    the last float bits, so detections whose scores are TIED within ``tie`` may come in another order (paired
    anyway), or one of them may win an NMS, the per-image top-k cut or the score threshold in one run and lose it in
    the other: a leftover whose score is within ``tie`` of another detection's (either run) or of ``score_thresh``
    counts as one of the ``ties``; any other is ``unexplained``. Ties are rare (a few per image at most); a real
    difference leaves many leftovers. Returns ``{"pairs": [(i, j)], "ties", "unexplained", "max_abs_diff":
    {output: float over the pairs}}``."""
    free = np.ones(len(got["scores"]), bool)
    pairs = []
    for i in np.argsort(-ref["scores"], kind="stable"):
        ok = (free & (got["classes"] == ref["classes"][i]) & np.isclose(got["scores"], ref["scores"][i], tol, tol)
              & np.isclose(got["boxes"], ref["boxes"][i], tol, tol).all(axis=1))
        if ok.any():
            j = int(np.flatnonzero(ok)[np.abs(got["boxes"][ok] - ref["boxes"][i]).max(axis=1).argmin()])
            pairs.append((int(i), j))
            free[j] = False
    paired = {i for i, _ in pairs}
    left = [(ref, got, i) for i in range(len(ref["scores"])) if i not in paired]
    left += [(got, ref, j) for j in np.flatnonzero(free)]

    def tied(own, other, k) -> bool:
        score = own["scores"][k]
        near = np.abs(np.concatenate([np.delete(own["scores"], k), other["scores"]]) - score) <= tie
        return bool(near.any()) or (score_thresh is not None and abs(score - score_thresh) <= tie)

    ties = sum(tied(*x) for x in left)
    diff = {name: max((float(np.abs(ref[name][i].astype(np.float64) - got[name][j]).max()) for i, j in pairs),
                      default=0.0) for name in ref if name in got and name != "classes"}
    return {"pairs": pairs, "ties": ties, "unexplained": len(left) - ties, "max_abs_diff": diff}


def _compare_with_pytorch(detector: OnnxDetector, graph: _InferenceGraph, images) -> float:
    """Max absolute difference of onnxruntime's raw outputs from PyTorch's over paired detections (every
    detection paired, but for a few score ties: :func:`match_detections`)."""
    worst = 0.0
    thresh = float(graph.model.roi_heads.box_predictor.test_score_thresh)
    for image in images:
        with torch.no_grad():
            ref = dict(zip(detector.outputs, (t.numpy() for t in graph(image))))
        match = match_detections(ref, detector.run(image), score_thresh=thresh)
        if match["unexplained"] or match["ties"] > max(4, len(ref["scores"]) // 20):
            raise OnnxExportCheckError(f"onnxruntime's detections on a {tuple(image.shape)} noise image differ from "
                                       f"PyTorch's: {match['unexplained'] + match['ties']} of "
                                       f"{len(ref['scores'])} without a match")
        if detector.mask and match["max_abs_diff"].get(MASK_OUTPUT, 0.0) > 1e-3:
            raise OnnxExportCheckError(f"onnxruntime's masks differ from PyTorch's by up to "
                                       f"{match['max_abs_diff'][MASK_OUTPUT]:.3g} on a {tuple(image.shape)} image")
        worst = max([worst, *match["max_abs_diff"].values()])
    return worst


# ------------------------------------------------------------------------------------------------- inference
class OnnxDetector:
    """An exported graph in onnxruntime's CPU provider, called like a Detectron2 model in eval mode.

    ``detector(inputs)``: ``inputs`` are Detectron2 dataset dicts (``"image"`` [3, H, W] from the test mapper,
    optional ``"height"`` / ``"width"`` of the original image); returns ``[{"instances": Instances}]`` post-processed
    by Detectron2's ``detector_postprocess`` (boxes in the original image, masks pasted), so that
    ``inference_on_dataset`` and ``COCOEvaluator`` treat it as they treat the PyTorch model. ``threads``:
    onnxruntime's intra-op threads (default: its own choice)."""

    def __init__(self, path: str, threads: int | None = None):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"ONNX file not found: {path}")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        except _ORT_LOAD_ERRORS as e:
            raise ValueError(f"{path}: onnxruntime cannot load it ({str(e).splitlines()[0]})") from None
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        if self.inputs != INPUTS or self.outputs[:3] != BOX_OUTPUTS:
            raise ValueError(f"{path} is not a detector written by export_onnx (inputs {self.inputs}, outputs "
                             f"{self.outputs}; expected {INPUTS} -> {BOX_OUTPUTS}[+masks])")
        self.mask = MASK_OUTPUT in self.outputs
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.input_format = self.metadata.get("us3l.input_format")

    def run(self, image) -> dict[str, np.ndarray]:
        """The graph's raw outputs for one image ([3, H, W] tensor or array)."""
        array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        return dict(zip(self.outputs, self.session.run(None, {"image": np.ascontiguousarray(array, np.float32)})))

    def __call__(self, inputs: list[dict]) -> list[dict]:
        results = []
        for x in inputs:
            h, w = (int(s) for s in x["image"].shape[-2:])
            raw = {k: torch.from_numpy(v) for k, v in self.run(x["image"]).items()}
            inst = Instances((h, w), pred_boxes=Boxes(raw["boxes"]), scores=raw["scores"],
                             pred_classes=raw["classes"])
            if self.mask:
                inst.pred_masks = raw[MASK_OUTPUT]
            results.append({"instances": detector_postprocess(inst, x.get("height", h), x.get("width", w))})
        return results


def evaluate_onnx(onnx_path: str, config: str, opts=(), output_dir: str | None = None,
                  threads: int | None = None) -> dict:
    """COCO box (and mask) AP of an exported graph on ``config``'s test set(s) (the plain config written beside the
    weights), with the loader, test mapper and evaluator of the PyTorch evaluation
    (:func:`us3l.d2.evaluation.build_test_loader`, :func:`~us3l.d2.evaluation.build_coco_evaluator`).

    Returns Detectron2's results (``{"bbox": {"AP": ...}, "segm": {...}}``; keyed by dataset when the config
    tests on several). Evaluator files go to ``output_dir/inference_onnx/<dataset>`` (default ``OUTPUT_DIR``)."""
    from detectron2.evaluation import inference_on_dataset

    from .evaluation import build_coco_evaluator, build_test_loader

    if not os.path.isfile(config):
        raise FileNotFoundError(f"config not found: {config}")
    cfg = load_config(config, list(opts) + ["MODEL.DEVICE", "cpu"])
    if is_slimmable_detector_cfg(cfg):
        raise ValueError(f"{config} is a slimmable detector config: pass the plain config written beside the "
                         "exported weights (DST.yaml of tools/export_detector.py)")
    detector = OnnxDetector(onnx_path, threads=threads)
    if detector.input_format not in (None, cfg.INPUT.FORMAT):
        raise ValueError(f"{onnx_path} was exported for INPUT.FORMAT {detector.input_format}, {config} feeds "
                         f"{cfg.INPUT.FORMAT}: the channel order would be wrong")
    if not cfg.DATASETS.TEST:
        raise ValueError(f"{config}: DATASETS.TEST is empty, nothing to evaluate on")
    results = {}
    for name in cfg.DATASETS.TEST:
        folder = os.path.join(output_dir or cfg.OUTPUT_DIR, "inference_onnx", name)
        results[name] = inference_on_dataset(detector, build_test_loader(cfg, name),
                                             build_coco_evaluator(cfg, name, folder))
    return results[cfg.DATASETS.TEST[0]] if len(results) == 1 else results
