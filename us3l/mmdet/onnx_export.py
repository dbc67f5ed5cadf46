"""ONNX deployment of a plain MMDetection Faster / Mask R-CNN (what ``tools/export_detector.py`` writes), run by
onnxruntime's CPU provider with standard ONNX operators only.

Why a graph of our own: MMDetection's ``predict`` holds data-dependent Python branches (empty proposals, levels
without RoIs) that a trace would freeze, and mmcv's compiled ``RoIAlign`` / ``nms`` export as mmcv custom
operators that onnxruntime does not have. :class:`DetectorGraph` runs the same modules (backbone, FPN, RPN head,
box and mask heads) and re-states MMDetection's test-time logic around them with torchvision's ``roi_align``
(aligned: ONNX ``RoiAlign`` with ``coordinate_transformation_mode='half_pixel'``, opset >= 16) and ``nms`` (ONNX
``NonMaxSuppression``), with the same offsets-per-group trick as mmcv's ``batched_nms``:

* input ``image``: float32 ``[1, 3, H, W]``, the test pipeline's resized image before the data preprocessor, in
  the pipeline's channel order (``PackDetInputs``' ``inputs`` as float). The graph does what MMDetection's
  ``DetDataPreprocessor`` does for one image: channel flip, mean/std, padding (``pad_value``) to a multiple of
  ``pad_size_divisor``; so it equals MMDetection at test batch size 1 (a larger batch pads every image to the
  batch's largest, which moves the features near the border of the smaller images a little).
* outputs ``boxes [N, 4]`` (x1 y1 x2 y2 in the resized image's pixels), ``scores [N]``, ``labels [N]`` (int64)
  and for Mask R-CNN ``masks [N, 1, M, M]``: each RoI's mask probabilities of its label (sigmoid), not pasted.
  :class:`OnnxDetector` rescales the boxes to the original image and pastes the masks with MMDetection's own
  ``_do_paste_mask``, as ``FCNMaskHead`` does, so ``CocoMetric`` scores it as it scores the PyTorch model.

The test-time settings (``test_cfg``: ``nms_pre``, NMS thresholds, ``score_thr``, ``max_per_img``) are constants
of the graph, taken from the config at export. Two known differences from ``model.test_step``, both at the
level of float rounding: Faster R-CNN's class-wise NMS runs on boxes before (MMDetection: after) the rescale to
the original image, which differs only where the resize scaled width and height by different factors; and
MMDetection splits a class-wise NMS of 10000 boxes or more into one NMS per class (same result up to rounding).
"""
from __future__ import annotations

import inspect
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.config import Config
from torch.onnx.operators import shape_as_tensor
from torchvision.ops import nms, roi_align

from ..checkpoint.frameworks import read_mmdet_checkpoint
from ..checkpoint.model_io import load_state_dict_checked
from ..detection.onnx_graph import INPUT, check_destination, check_opset, ort_session, write_graph
from .slimmable_eval import coco_metrics, slimmable_config

INPUTS = [INPUT]
BOX_OUTPUTS = ["boxes", "scores", "labels"]
MASK_OUTPUT = "masks"
SUPPORTED_DETECTORS = ("FasterRCNN", "MaskRCNN")
META_MASK_THR = "us3l.mask_thr_binary"


# ---------------------------------------------------------------------------------------------- checks
def _refuse(config: str, what: str) -> ValueError:
    return ValueError(f"{config}: {what}; ONNX export covers MMDetection's plain FasterRCNN / MaskRCNN "
                      "(RPNHead, StandardRoIHead, SingleRoIExtractor with RoIAlign, DeltaXYWHBBoxCoder, nms)")


def _refuse_slimmable(model_type: str, config: str) -> None:
    if model_type.startswith("Slimmable"):
        raise ValueError(f"{config}: model.type {model_type} is the slimmable detector; export one width as a plain "
                         "detector first (tools/export_detector.py SRC DST.pth --width W --config CFG) and give "
                         "DST.pth with the DST.py written beside it")


def _check_nms(cfg, where: str, config: str) -> None:
    nms = dict(cfg.get("nms") or {})
    if nms.get("type", "nms") != "nms" or set(nms) - {"type", "iou_threshold", "class_agnostic", "split_thr"}:
        raise _refuse(config, f"{where}.nms={nms} is not plain nms with an iou_threshold")


def _check_extractor(extractor, where: str, config: str) -> None:
    from mmcv.ops import RoIAlign
    from mmdet.models.roi_heads.roi_extractors import SingleRoIExtractor

    if type(extractor) is not SingleRoIExtractor:
        raise _refuse(config, f"{where} is {type(extractor).__name__}")
    for layer in extractor.roi_layers:
        if not isinstance(layer, RoIAlign) or layer.pool_mode != "avg":
            raise _refuse(config, f"{where} pools with {layer!r}, not RoIAlign(pool_mode='avg')")


def check_supported(model, config: str = "the config") -> None:
    """Refuse, with one line naming the part, any model the graph would not reproduce exactly."""
    from mmdet.models.dense_heads import RPNHead
    from mmdet.models.roi_heads import StandardRoIHead
    from mmdet.models.task_modules.coders import DeltaXYWHBBoxCoder

    name = type(model).__name__
    _refuse_slimmable(name, config)
    if name not in SUPPORTED_DETECTORS:
        raise _refuse(config, f"model.type {name!r} is not supported")
    roi = model.roi_head
    if type(model.rpn_head) is not RPNHead or type(roi) is not StandardRoIHead or roi.with_shared_head:
        raise _refuse(config, f"{type(model.rpn_head).__name__} / {type(roi).__name__} (C4 shared head: "
                              f"{roi.with_shared_head}) is not RPNHead / StandardRoIHead without a shared head")
    head = roi.bbox_head
    for where, coder in (("rpn_head", model.rpn_head.bbox_coder), ("bbox_head", head.bbox_coder)):
        if type(coder) is not DeltaXYWHBBoxCoder:
            raise _refuse(config, f"{where}.bbox_coder is {type(coder).__name__}")
    if head.custom_cls_channels or not (head.with_cls and head.with_reg) or head.predict_box_type != "hbox":
        raise _refuse(config, "the box head has custom classification channels or no classifier / regressor")
    _check_nms(model.rpn_head.test_cfg, "test_cfg.rpn", config)
    _check_nms(roi.test_cfg, "test_cfg.rcnn", config)
    _check_extractor(roi.bbox_roi_extractor, "roi_head.bbox_roi_extractor", config)
    if roi.with_mask:
        _check_extractor(roi.mask_roi_extractor, "roi_head.mask_roi_extractor", config)


# ----------------------------------------------------------------------------------------- graph parts
def _shape(x: torch.Tensor) -> torch.Tensor:
    """``x``'s shape as an int64 tensor: an ONNX ``Shape`` in the trace, so H and W stay dynamic."""
    return shape_as_tensor(x)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou_threshold: float,
                class_agnostic: bool = False) -> torch.Tensor:
    """Indices kept by NMS within each group, by decreasing score: mmcv's ``batched_nms`` (boxes shifted by
    ``group * (max coordinate + 1)``, one NMS) on torchvision's ``nms``. The maximum also counts 0, so that an
    empty set of boxes needs no ReduceMax over nothing (boxes clipped to the image are >= 0: the same offsets)."""
    if not class_agnostic:
        top = torch.cat([boxes.reshape(-1), boxes.new_zeros(1)]).max()
        boxes = boxes + (groups.to(boxes) * (top + 1))[:, None]
    return nms(boxes, scores, iou_threshold)


class _Coder:
    """``DeltaXYWHBBoxCoder.decode`` (MMDetection's ``delta2bbox``, same operations in the same order) with the
    image size as tensors, for any leading shape of ``rois`` / ``deltas`` (``[..., 4]``)."""

    def __init__(self, coder):
        self.means, self.stds = tuple(float(m) for m in coder.means), tuple(float(s) for s in coder.stds)
        self.clip_border, self.add_ctr_clamp, self.ctr_clamp = coder.clip_border, coder.add_ctr_clamp, coder.ctr_clamp
        # the callers (RPNHead, BBoxHead) use decode's default aspect-ratio clip
        clip = inspect.signature(type(coder).decode).parameters["wh_ratio_clip"].default
        self.max_ratio = float(np.abs(np.log(clip)))

    def decode(self, rois: torch.Tensor, deltas: torch.Tensor, bounds: torch.Tensor) -> torch.Tensor:
        denorm = deltas * deltas.new_tensor(self.stds) + deltas.new_tensor(self.means)
        dxy, dwh = denorm[..., :2], denorm[..., 2:]
        pxy = (rois[..., :2] + rois[..., 2:]) * 0.5
        pwh = rois[..., 2:] - rois[..., :2]
        dxy_wh = pwh * dxy
        if self.add_ctr_clamp:
            dxy_wh = torch.clamp(dxy_wh, max=self.ctr_clamp, min=-self.ctr_clamp)
            dwh = torch.clamp(dwh, max=self.max_ratio)
        else:
            dwh = dwh.clamp(min=-self.max_ratio, max=self.max_ratio)
        gxy = pxy + dxy_wh
        gwh = pwh * dwh.exp()
        boxes = torch.cat([gxy - (gwh * 0.5), gxy + (gwh * 0.5)], dim=-1)
        if self.clip_border:  # bounds: (w, h, w, h) of the resized image, float
            boxes = torch.minimum(boxes.clamp(min=0), bounds)
        return boxes


class _RoIFeatures(nn.Module):
    """``SingleRoIExtractor``: each RoI pooled from its level (``floor(log2(sqrt(area) / finest_scale + 1e-6))``,
    clamped), written as comparisons with powers of two (no ``log2`` rounding). Every level pools every RoI and a
    ``Where`` keeps the RoI's own level, so a level without RoIs needs no data-dependent branch."""

    def __init__(self, extractor):
        super().__init__()
        layers = extractor.roi_layers
        self.num_levels, self.finest_scale = len(layers), float(extractor.finest_scale)
        self.args = [(tuple(layer.output_size), float(layer.spatial_scale), int(layer.sampling_ratio),
                      bool(layer.aligned)) for layer in layers]

    def levels(self, rois: torch.Tensor) -> torch.Tensor:
        scale = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
        ratio = scale / self.finest_scale + 1e-6
        level = torch.zeros_like(ratio, dtype=torch.long)
        for k in range(1, self.num_levels):
            level = level + (ratio >= 2.0 ** k).long()
        return level

    def forward(self, feats, rois: torch.Tensor) -> torch.Tensor:
        level, out = self.levels(rois), None
        for i, (size, scale, ratio, aligned) in enumerate(self.args):
            pooled = roi_align(feats[i], rois, size, scale, ratio, aligned)
            out = pooled if out is None else torch.where((level == i)[:, None, None, None], pooled, out)
        return out


class DetectorGraph(nn.Module):
    """One image through a plain FasterRCNN / MaskRCNN in eval mode, tensors in and out (the module traced to
    ONNX; it also runs eagerly). See the module docstring for the input and outputs."""

    def __init__(self, model):
        super().__init__()
        check_supported(model)
        self.backbone, self.neck, self.rpn_head = model.backbone, model.neck, model.rpn_head
        roi = model.roi_head
        self.bbox_head, self.with_mask = roi.bbox_head, roi.with_mask
        self.mask_head = roi.mask_head if roi.with_mask else None
        pre = model.data_preprocessor
        self.flip, self.normalize = bool(pre._channel_conversion), bool(pre._enable_normalize)
        if self.normalize:
            self.register_buffer("mean", pre.mean.detach().clone().float(), persistent=False)
            self.register_buffer("std", pre.std.detach().clone().float(), persistent=False)
        self.divisor, self.pad_value = int(pre.pad_size_divisor), float(pre.pad_value)
        gen = model.rpn_head.prior_generator
        for i, base in enumerate(gen.base_anchors):
            self.register_buffer(f"base_anchors_{i}", base.detach().clone().float(), persistent=False)
        self.strides = [tuple(float(s) for s in stride) for stride in gen.strides]
        self.rpn_cfg, self.rcnn_cfg = dict(model.rpn_head.test_cfg), dict(roi.test_cfg)
        self.rpn_coder, self.bbox_coder = _Coder(model.rpn_head.bbox_coder), _Coder(self.bbox_head.bbox_coder)
        self.bbox_rois = _RoIFeatures(roi.bbox_roi_extractor)
        self.mask_rois = _RoIFeatures(roi.mask_roi_extractor) if roi.with_mask else None

    # --- MMDetection's DetDataPreprocessor for one image
    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        x = image[:, [2, 1, 0]] if self.flip else image
        if self.normalize:
            x = (x - self.mean) / self.std
        if self.divisor > 1:  # pad right / bottom to the next multiple, by a constant pad then a dynamic crop
            d, shape = self.divisor, _shape(x)
            h, w = (shape[2] + d - 1) // d * d, (shape[3] + d - 1) // d * d
            x = F.pad(x, (0, d - 1, 0, d - 1), value=self.pad_value)[:, :, :h, :w]
        return x

    # --- RPNHead.predict_by_feat for one image
    def anchors(self, level: int, feat: torch.Tensor) -> torch.Tensor:
        """``AnchorGenerator.single_level_grid_priors`` on ``feat``'s (dynamic) size."""
        shape, (sw, sh) = _shape(feat), self.strides[level]
        xs = torch.arange(shape[3]).to(torch.float32) * sw
        ys = torch.arange(shape[2]).to(torch.float32) * sh
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        xx, yy = xx.reshape(-1), yy.reshape(-1)
        shifts = torch.stack([xx, yy, xx, yy], dim=-1)
        return (getattr(self, f"base_anchors_{level}")[None, :, :] + shifts[:, None, :]).reshape(-1, 4)

    def proposals(self, feats, bounds: torch.Tensor) -> torch.Tensor:
        cfg, head = self.rpn_cfg, self.rpn_head
        cls_scores, bbox_preds = head(feats)
        nms_pre = cfg.get("nms_pre", -1)
        all_deltas, all_priors, all_scores, all_levels = [], [], [], []
        for level, (cls, reg) in enumerate(zip(cls_scores, bbox_preds)):
            priors = self.anchors(level, cls)
            logits = cls[0].permute(1, 2, 0).reshape(-1, head.cls_out_channels)
            scores = logits.sigmoid() if head.use_sigmoid_cls else logits.softmax(-1)[:, :-1]
            scores = scores.reshape(-1)
            deltas = reg[0].permute(1, 2, 0).reshape(-1, head.bbox_coder.encode_size)
            if nms_pre > 0:  # the nms_pre best of the level (a slice past the end takes all)
                scores, order = scores.sort(descending=True)
                scores, order = scores[:nms_pre], order[:nms_pre]
                deltas, priors = deltas[order], priors[order]
            all_deltas.append(deltas)
            all_priors.append(priors)
            all_scores.append(scores)
            all_levels.append(torch.full_like(scores, level, dtype=torch.long))
        boxes = self.rpn_coder.decode(torch.cat(all_priors), torch.cat(all_deltas), bounds)
        scores, levels = torch.cat(all_scores), torch.cat(all_levels)
        if cfg.get("min_bbox_size", -1) >= 0:
            size = cfg["min_bbox_size"]
            valid = torch.nonzero(((boxes[:, 2] - boxes[:, 0]) > size) & ((boxes[:, 3] - boxes[:, 1]) > size))[:, 0]
            boxes, scores, levels = boxes[valid], scores[valid], levels[valid]
        nms_cfg = cfg["nms"]
        keep = batched_nms(boxes, scores, levels, nms_cfg["iou_threshold"], nms_cfg.get("class_agnostic", False))
        return boxes[keep[:cfg["max_per_img"]]]

    # --- StandardRoIHead.predict_bbox / BBoxHead._predict_by_feat_single + multiclass_nms
    def detections(self, feats, proposals: torch.Tensor, bounds: torch.Tensor):
        head, cfg = self.bbox_head, self.rcnn_cfg
        rois = torch.cat([proposals.new_zeros(proposals.shape[0], 1), proposals], dim=1)
        cls_score, bbox_pred = head(self.bbox_rois(feats, rois))
        scores = F.softmax(cls_score, dim=-1)[:, :-1]  # background (last) excluded
        deltas = bbox_pred.reshape(-1, 1 if head.reg_class_agnostic else head.num_classes, 4)
        boxes = self.bbox_coder.decode(proposals[:, None, :].expand_as(deltas), deltas, bounds)
        boxes = boxes.expand(-1, head.num_classes, -1).reshape(-1, 4)  # (RoI, class) pairs, class fastest
        labels = torch.arange(head.num_classes)[None, :].expand_as(scores).reshape(-1)
        scores = scores.reshape(-1)
        valid = torch.nonzero(scores > cfg["score_thr"])[:, 0]
        boxes, scores, labels = boxes[valid], scores[valid], labels[valid]
        nms_cfg = cfg["nms"]
        keep = batched_nms(boxes, scores, labels, nms_cfg["iou_threshold"], nms_cfg.get("class_agnostic", False))
        if cfg["max_per_img"] > 0:
            keep = keep[:cfg["max_per_img"]]
        return boxes[keep], scores[keep], labels[keep]

    # --- StandardRoIHead.predict_mask up to FCNMaskHead's sigmoid and per-class selection (pasting: outside)
    def masks(self, feats, boxes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        rois = torch.cat([boxes.new_zeros(boxes.shape[0], 1), boxes], dim=1)
        probs = self.mask_head(self.mask_rois(feats, rois)).sigmoid()
        if self.mask_head.class_agnostic:
            return probs
        index = labels[:, None, None, None].expand(-1, 1, probs.shape[2], probs.shape[3])
        return probs.gather(1, index)

    def forward(self, image: torch.Tensor):
        shape = _shape(image)
        bounds = torch.stack([shape[3], shape[2], shape[3], shape[2]]).to(torch.float32)  # img_shape: unpadded
        feats = self.neck(self.backbone(self.preprocess(image)))
        boxes, scores, labels = self.detections(feats, self.proposals(feats, bounds), bounds)
        if not self.with_mask:
            return boxes, scores, labels
        return boxes, scores, labels, self.masks(feats, boxes, labels)


# --------------------------------------------------------------------------------------------- export
def _require_file(path: str, what: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")


def load_plain_detector(weights: str, config: str, cfg_options: Mapping | None = None):
    """``(model in eval mode, cfg)``: the plain detector of ``config`` with every tensor of ``weights`` (strict,
    weights-only reading)."""
    from mmdet.registry import MODELS

    _require_file(config, "config")
    _require_file(weights, "weights")
    cfg = slimmable_config(config, dict(cfg_options or {}))
    _refuse_slimmable(str(cfg.model.get("type", "")), config)  # before building it
    model = MODELS.build(cfg.model)
    check_supported(model, config)
    state, _ = read_mmdet_checkpoint(weights)
    load_state_dict_checked(model, state, f"loading {weights} into {type(model).__name__} ({config})")
    return model.eval(), cfg


def _example_image(cfg: Config) -> torch.Tensor:
    """What the trace runs on: noise at the test pipeline's scale, not a multiple of the pad divisor (the graph
    holds no branch on the data, so any image traces the same graph)."""
    from mmdet.utils import get_test_pipeline_cfg

    try:
        pipeline = get_test_pipeline_cfg(cfg)
    except (AttributeError, KeyError, TypeError):  # no test pipeline where mmdet looks: MMDetection's default size
        pipeline = []
    scale = next((t.get("scale") for t in pipeline if t.get("type") == "Resize"), None)
    w, h = tuple(scale) if isinstance(scale, (list, tuple)) else (800, 800)  # Resize scale: (w, h)
    g = torch.Generator().manual_seed(0)
    return torch.rand(1, 3, int(h) - 3, int(w) - 5, generator=g) * 255


def export_onnx(weights: str, config: str, dst: str, cfg_options: Mapping | None = None, opset: int = 17) -> dict:
    """Write the plain detector (``weights`` + the ``config`` that ``tools/export_detector.py`` wrote beside them,
    ``cfg_options`` merged as ``--cfg-options``) to ``dst`` as ONNX with dynamic H / W, then check it
    (:func:`us3l.detection.onnx_graph.check_onnx`) and run it once in onnxruntime. The test-time settings of the
    config are baked in."""
    opset = check_opset(opset, "MMDetection")
    check_destination(dst, [weights, config])  # not an input, not under a file
    model, cfg = load_plain_detector(weights, config, cfg_options)
    graph = DetectorGraph(model).eval()
    outputs = BOX_OUTPUTS + ([MASK_OUTPUT] if graph.with_mask else [])
    example = _example_image(cfg)
    meta = {"us3l.framework": "mmdet", "us3l.detector": type(model).__name__,
            "us3l.weights": os.path.basename(weights), "us3l.config": os.path.basename(config),
            "us3l.input": "float32 [1,3,H,W]: the test pipeline's resized image in its channel order, before "
                          "normalisation and padding", "us3l.boxes": "pixels of the resized image"}
    if graph.with_mask:
        meta[META_MASK_THR] = repr(float(graph.rcnn_cfg["mask_thr_binary"]))
    # the run: shapes inferred at run time hold
    checked = write_graph(graph, example, dst, outputs, {INPUT: {2: "height", 3: "width"},
                                                          **{k: {0: "detections"} for k in outputs}}, opset, meta,
                          checks=[lambda proto: OnnxDetector(dst)(example[0])])
    return {"onnx": dst, "opset": int(opset), "inputs": list(INPUTS), "outputs": outputs, "mask": graph.with_mask,
            "weights": weights, "config": config, "ops": checked["ops"]}


# ------------------------------------------------------------------------------------------ inference
def paste_masks(probs: torch.Tensor, boxes: torch.Tensor, ori_shape: Sequence[int], threshold: float) -> torch.Tensor:
    """``FCNMaskHead._predict_by_feat_single`` after its sigmoid and class selection, on CPU: ``probs``
    ``[N, 1, M, M]`` pasted into ``[N, H, W]`` at ``boxes`` (original image pixels), one mask at a time with
    MMDetection's ``_do_paste_mask``, binarised at ``threshold`` (uint8 0-255 probabilities when negative)."""
    from mmdet.models.roi_heads.mask_heads.fcn_mask_head import _do_paste_mask

    img_h, img_w = (int(s) for s in ori_shape[:2])
    out = torch.zeros(len(probs), img_h, img_w, dtype=torch.bool if threshold >= 0 else torch.uint8)
    if not len(probs):  # MMDetection's empty_instances
        return out
    for inds in torch.chunk(torch.arange(len(probs)), len(probs)):
        chunk, spatial = _do_paste_mask(probs[inds], boxes[inds], img_h, img_w, skip_empty=True)
        chunk = (chunk >= threshold).to(dtype=torch.bool) if threshold >= 0 else (chunk * 255).to(dtype=torch.uint8)
        out[(inds,) + spatial] = chunk
    return out


class OnnxDetector:
    """An exported graph in onnxruntime (CPU) behind MMDetection's ``test_step``: test-loader batches in,
    ``DetDataSample``s with ``pred_instances`` in the original image's pixels out (what ``CocoMetric`` reads)."""

    def __init__(self, onnx_path: str, threads: int | None = None):
        self.session = ort_session(onnx_path, threads)
        self.outputs = [o.name for o in self.session.get_outputs()]
        if self.outputs[:3] != BOX_OUTPUTS:
            raise ValueError(f"{onnx_path}: outputs {self.outputs} are not those of an exported MMDetection detector "
                             f"({BOX_OUTPUTS} [+ {MASK_OUTPUT!r}])")
        self.with_mask = MASK_OUTPUT in self.outputs
        meta = self.session.get_modelmeta().custom_metadata_map
        self.mask_thr = float(meta.get(META_MASK_THR, 0.5))

    def __call__(self, image) -> dict[str, np.ndarray]:
        """The raw outputs for one ``[3, H, W]`` image (the test pipeline's ``inputs``)."""
        x = torch.as_tensor(image).to(torch.float32)[None].contiguous().numpy()
        return dict(zip(self.outputs, self.session.run(self.outputs, {INPUTS[0]: x})))

    def eval(self):
        """Inference only (``coco_metrics`` calls it as on a PyTorch model)."""
        return self

    def predict_one(self, image, meta: Mapping):
        """``InstanceData`` of one image: MMDetection's rescale of the boxes to ``meta['ori_shape']`` (Mask R-CNN
        divides by the scale factor, Faster R-CNN multiplies by its inverse) and its mask pasting."""
        from mmdet.structures.bbox import scale_boxes
        from mmengine.structures import InstanceData

        out = {k: torch.from_numpy(v) for k, v in self(image).items()}
        factor = meta["scale_factor"]
        boxes = out["boxes"]
        if self.with_mask:
            boxes = boxes / boxes.new_tensor(factor).repeat((1, 2))
        elif len(boxes):
            boxes = scale_boxes(boxes, [1 / s for s in factor])
        result = InstanceData(bboxes=boxes, scores=out["scores"], labels=out["labels"])
        if self.with_mask:
            result.masks = paste_masks(out[MASK_OUTPUT], boxes, meta["ori_shape"], self.mask_thr)
        return result

    def test_step(self, batch: Mapping) -> list:
        samples = batch["data_samples"]
        for image, sample in zip(batch["inputs"], samples):
            sample.pred_instances = self.predict_one(image, sample.metainfo)
        return samples


def evaluate_onnx(onnx_path: str, config: str, cfg_options: Mapping | None = None, threads: int | None = None
                  ) -> dict:
    """COCO box (and mask) AP of the graph on ``config``'s test set: the test loader and ``CocoMetric`` of the
    PyTorch evaluation (:func:`us3l.mmdet.slimmable_eval.coco_metrics`), onnxruntime in place of the model."""
    _require_file(config, "config")
    detector = OnnxDetector(onnx_path, threads)
    metrics = coco_metrics(detector, slimmable_config(config, dict(cfg_options or {})))

    def pct(key):
        return 100 * metrics[key] if key in metrics and not math.isnan(metrics[key]) else None

    return {"onnx": onnx_path, "box_AP": pct("bbox_mAP"), "box_AP50": pct("bbox_mAP_50"), "mask_AP": pct("segm_mAP"),
            "mask_AP50": pct("segm_mAP_50"), "metrics": metrics}
