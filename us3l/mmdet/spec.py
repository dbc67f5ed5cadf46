"""An MMDetection 3.x config read into / written from the framework-neutral :class:`us3l.detection.spec.DetectorSpec`.

Why: a converted checkpoint needs the other framework's config to compute what it computed here. Every field
is read from the config (a key left out: the default of the class that reads it); an option Detectron2 has no
counterpart for is a :class:`SpecError` naming the key, never dropped. Writing starts from this project's
template of the kind (schedule, runtime, data) and sets every spec field. The counts that follow from the spec
(:func:`_derived`) are written from one table and checked against it when reading, so a config whose parts
disagree is refused. Fields without a part (C4: FPN and box-FC; Faster R-CNN: mask) keep the spec defaults.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

from mmengine.config import Config

from ..data.paths import checkout_root
from ..data.synthetic import CLASS_NAMES
from ..detection import backbone_stage_channels
from ..detection.spec import DetectorSpec, Pooler, SpecError, target_stds, weights_from_stds
from ..models.resnet import stage_channels
from ..ops import DEFAULT_WIDTH_RANGE
from ..width import width_tag
from ._resnet_parts import DEFAULT_NORM_CFG

_MISSING = object()
TASK_TYPES = {"MaskRCNN": ("mask", False), "FasterRCNN": ("faster", False),
              "SlimmableMaskRCNN": ("mask", True), "SlimmableFasterRCNN": ("faster", True)}
FEATURE_STRIDES = {"fpn": (4, 8, 16, 32, 64), "c4": (16,)}  # the feature maps anchors lie on (p2-p6 / res4)
POOLER_STRIDES = {"fpn": [4, 8, 16, 32], "c4": [16]}          # the maps RoIs are pooled from (p2-p5 / res4)
NORMS = ("BN", "SyncBN", "GN")
GN_GROUPS = 32  # Detectron2's get_norm("GN") uses 32 groups
TEST_TRANSFORMS = ("LoadImageFromFile", "LoadAnnotations", "Resize", "PackDetInputs")
TEMPLATE_DIRS = {"mask": "projects/segmentation/mmdet_configs", "faster": "projects/detection/mmdet_configs"}
TEMPLATE_NAMES = {("us3l_shapes", "fpn", True): "_us-r50_fpn_slimmable_tiny.py",
                  ("us3l_shapes", "fpn", False): "_us-r50_fpn_1x_coco_tiny.py",
                  ("us3l_shapes", "c4", False): "_us-r50_c4_1x_coco_tiny.py",
                  ("coco", "fpn", True): "_us-r50_fpn_slimmable_1x.py",
                  ("coco", "fpn", False): "_us-r50_fpn_1x_coco.py",
                  ("coco", "c4", False): "_us-r50_c4_1x_coco.py"}


def _plain(value):
    """Sequences as lists (recursively), for comparing a config value with a wanted one."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _num(x):
    """An integral float as an int (anchor scales and sizes read and write as the configs spell them)."""
    x = float(x)
    return int(x) if x.is_integer() else x


class _Node:
    """A mapping of the config with its dotted name: reads keys with errors that name them."""

    def __init__(self, value, name: str):
        self.value, self.name = value, name

    def key(self, key: str) -> str:
        return f"{self.name}.{key}" if self.name else key

    def get(self, key: str, default=_MISSING):
        if key in self.value:
            return self.value[key]
        if default is _MISSING:
            raise SpecError(f"{self.key(key)} is missing")
        return default

    def child(self, key: str, default=_MISSING) -> _Node:
        value = self.get(key, default)
        if not isinstance(value, Mapping):
            raise SpecError(f"{self.key(key)} is {value!r}, not a dict")
        return _Node(value, self.key(key))

    def expect(self, key: str, default, wanted, why: str) -> None:
        value = self.get(key, default)
        if _plain(value) != _plain(wanted):
            raise SpecError(f"{self.key(key)} = {value!r}: {why}")

    def type_in(self, allowed) -> str:
        kind = str(self.get("type")).split(".")[-1]  # "mmdet.Resize" -> "Resize"
        if kind not in allowed:
            raise SpecError(f"{self.key('type')} = {kind!r}: only {list(allowed)} can be expressed")
        return kind

    def absent(self, key: str, why: str) -> None:
        if self.value.get(key) is not None:
            raise SpecError(f"{self.key(key)} = {self.value[key]!r}: {why}")


def _at(node: _Node, path: str) -> _Node:
    for key in path.split("."):
        node = node.child(key)
    return node


# ------------------------------------------------------------------------------------ the values a spec decides
def _derived(spec: DetectorSpec) -> dict:
    """``{path below model: (value, default when the key is absent)}``: the layout, class count and channel counts
    that follow from the spec (what :func:`config_from_spec` writes and :func:`spec_from_config` checks)."""
    full = stage_channels(spec.depth, 1.0)
    chans = full if spec.slimmable else backbone_stage_channels(full, spec.width)
    out = {"backbone.depth": (spec.depth, 50), "roi_head.bbox_head.num_classes": (spec.num_classes, 80)}
    if spec.slimmable:
        out.update({"width_range": (tuple(spec.width_range), DEFAULT_WIDTH_RANGE),
                    "slim_neck_and_heads": (spec.slim_neck_heads, True)})
    else:
        out["backbone.width_mult"] = (spec.width, 1.0)
    if spec.task == "mask":
        out["roi_head.mask_head.num_classes"] = (spec.num_classes, 80)
    out.update(_derived_fpn(spec, chans) if spec.layout == "fpn" else _derived_c4(spec, chans))
    return out


def _derived_fpn(spec: DetectorSpec, chans) -> dict:
    fpn = spec.fpn_channels
    out = {"backbone.num_stages": (4, 4), "backbone.out_indices": ((0, 1, 2, 3), (0, 1, 2, 3)),
           "neck.in_channels": (list(chans), _MISSING), "neck.out_channels": (fpn, _MISSING),
           "neck.num_outs": (len(chans) + 1, _MISSING),
           "rpn_head.in_channels": (fpn, _MISSING), "rpn_head.feat_channels": (fpn, 256),
           "rpn_head.anchor_generator.strides": (list(FEATURE_STRIDES["fpn"]), _MISSING),
           "roi_head.bbox_roi_extractor.out_channels": (fpn, _MISSING),
           "roi_head.bbox_roi_extractor.featmap_strides": (POOLER_STRIDES["fpn"], _MISSING),
           "roi_head.bbox_head.in_channels": (fpn, 256), "roi_head.bbox_head.fc_out_channels": (spec.box_fc_dim, 1024),
           "roi_head.bbox_head.roi_feat_size": (spec.box_pooler.resolution, 7)}
    if spec.task == "mask":
        out.update({"roi_head.mask_roi_extractor.out_channels": (fpn, _MISSING),
                    "roi_head.mask_roi_extractor.featmap_strides": (POOLER_STRIDES["fpn"], _MISSING),
                    "roi_head.mask_head.in_channels": (fpn, 256), "roi_head.mask_head.num_convs": (4, 4),
                    "roi_head.mask_head.conv_out_channels": (spec.mask_conv_dim, 256)})
    return out


def _derived_c4(spec: DetectorSpec, chans) -> dict:
    """C4: res2-res4 in the backbone, res5 the RoI shared head; the RPN keeps res4's width (Detectron2's
    StandardRPNHead), the box predictor averages res5 over the pooled RoI halved by res5's stride."""
    if spec.box_pooler.resolution % 2:
        raise SpecError(f"a C4 box pooler of odd resolution {spec.box_pooler.resolution}: res5 (stride 2) halves it")
    out = {"backbone.num_stages": (3, 4), "backbone.out_indices": ((2,), (0, 1, 2, 3)),
           "rpn_head.in_channels": (chans[2], _MISSING), "rpn_head.feat_channels": (chans[2], 256),
           "rpn_head.anchor_generator.strides": (list(FEATURE_STRIDES["c4"]), _MISSING),
           "roi_head.shared_head.depth": (spec.depth, 50), "roi_head.shared_head.stage": (3, 3),
           "roi_head.shared_head.width_mult": (spec.width, 1.0),
           "roi_head.bbox_roi_extractor.out_channels": (chans[2], _MISSING),
           "roi_head.bbox_roi_extractor.featmap_strides": (POOLER_STRIDES["c4"], _MISSING),
           "roi_head.bbox_head.in_channels": (chans[3], 256), "roi_head.bbox_head.with_avg_pool": (True, False),
           "roi_head.bbox_head.roi_feat_size": (spec.box_pooler.resolution // 2, 7)}
    if spec.task == "mask":
        out.update({"roi_head.mask_roi_extractor": (None, None),  # the box RoIs' res5 features
                    "roi_head.mask_head.in_channels": (chans[3], 256), "roi_head.mask_head.num_convs": (0, 4),
                    "roi_head.mask_head.conv_out_channels": (spec.mask_conv_dim, 256)})
    return out


def _check_derived(model: _Node, spec: DetectorSpec) -> None:
    for path, (value, default) in _derived(spec).items():
        parent, _, key = path.rpartition(".")
        node = _at(model, parent) if parent else model
        node.expect(key, default, value, f"Detectron2 derives {value!r} there from the rest of this config "
                    "(backbone depth and width, FPN channels, poolers, classes)")


# ------------------------------------------------------------------------------------------------------ reading
def spec_from_config(cfg) -> DetectorSpec:
    """The :class:`DetectorSpec` of an MMDetection config (``mmengine.config.Config``); :class:`SpecError` naming
    the key for anything it cannot express."""
    root = _Node(cfg, "")
    model = _Node(root.get("model"), "model")
    task, slimmable = TASK_TYPES.get(model.get("type"), (None, None))
    if task is None:
        raise SpecError(f"model.type = {model.get('type')!r}: only {list(TASK_TYPES)} can be expressed")
    roi = model.child("roi_head")
    roi.type_in(("StandardRoIHead",))
    layout = _layout(model, roi)
    if slimmable and layout == "c4":
        raise SpecError(f"model.roi_head.shared_head: a {model.get('type')} has an FPN neck, not a C4 res5 head")
    fields = dict(task=task, layout=layout, slimmable=slimmable)
    fields.update(_backbone_fields(model, slimmable, layout))
    fields.update(_input_fields(model.child("data_preprocessor")))
    fields.update(_test_data_fields(root.child("test_dataloader").child("dataset")))
    fields.update(_rpn_fields(model.child("rpn_head")))
    fields.update(_box_fields(roi, layout))
    if task == "mask":
        fields.update(_mask_fields(roi, layout, fields["box_pooler"]))
    if layout == "fpn":
        fields.update(_neck_fields(model.child("neck")))
    fields.update(_test_cfg_fields(model.child("test_cfg"), task))
    spec = DetectorSpec(**fields)
    if spec.class_names is not None and len(spec.class_names) != spec.num_classes:
        raise SpecError(f"test_dataloader.dataset.metainfo.classes names {len(spec.class_names)} classes but "
                        f"model.roi_head.bbox_head.num_classes is {spec.num_classes}")
    _check_derived(model, spec)
    return spec


def _layout(model: _Node, roi: _Node) -> str:
    neck, shared = model.get("neck", None), roi.get("shared_head", None)
    if neck is not None and shared is not None:
        raise SpecError("model.neck and model.roi_head.shared_head are both set: neither an FPN nor a C4 detector")
    if neck is None and shared is None:
        raise SpecError("model.neck (FPN) and model.roi_head.shared_head (C4) are both missing")
    return "fpn" if neck is not None else "c4"


def _norm_name(node: _Node, key: str, default, allowed=NORMS) -> str:
    """``norm_cfg`` as Detectron2 names it: ``""`` (none), BN, SyncBN, GN (32 groups)."""
    norm = node.get(key, default)
    if norm is None:
        if "" not in allowed:
            raise SpecError(f"{node.key(key)} is None: a US3L backbone always has norm layers")
        return ""
    norm = _Node(norm, node.key(key))
    kind = {"BN2d": "BN"}.get(norm.get("type"), norm.get("type"))
    if kind not in allowed:
        raise SpecError(f"{norm.key('type')} = {kind!r}: only {[a for a in allowed if a]} (or none) can be expressed")
    if kind == "GN":
        norm.expect("num_groups", _MISSING, GN_GROUPS, f"Detectron2's GN has {GN_GROUPS} groups")
    return kind


def _backbone_norm(bb: _Node) -> str:
    """BN with frozen parameters and statistics (``requires_grad=False``, ``norm_eval=True``) is Detectron2's
    FrozenBN."""
    kind = _norm_name(bb, "norm_cfg", DEFAULT_NORM_CFG)
    frozen = not bb.get("norm_cfg", DEFAULT_NORM_CFG).get("requires_grad", True) and bb.get("norm_eval", True)
    return "FrozenBN" if kind == "BN" and frozen else kind


def _backbone_fields(model: _Node, slimmable: bool, layout: str) -> dict:
    bb = model.child("backbone")
    bb.type_in(("US3LSlimmableResNet",) if slimmable else ("US3LResNet",))
    style = bb.get("style", "pytorch")
    if style not in ("pytorch", "caffe"):
        raise SpecError(f"model.backbone.style = {style!r}: only 'pytorch' and 'caffe' can be expressed")
    out = dict(depth=int(bb.get("depth", 50)), stride_in_1x1=style == "caffe", backbone_norm=_backbone_norm(bb))
    if slimmable:
        width_range = tuple(float(w) for w in model.get("width_range", DEFAULT_WIDTH_RANGE))
        # the slimmable detector runs at the top of its range unless us3l.set_width says otherwise (apply_width)
        out.update(width_range=width_range, width=width_range[1],
                   slim_neck_heads=bool(model.get("slim_neck_and_heads", True)))
    else:
        out["width"] = float(bb.get("width_mult", 1.0))
    if layout == "c4":
        head = _at(model, "roi_head.shared_head")
        head.type_in(("US3LResLayer",))
        if _backbone_norm(head) != out["backbone_norm"]:
            raise SpecError(f"model.roi_head.shared_head.norm_cfg ({_backbone_norm(head)}) differs from "
                            f"model.backbone.norm_cfg ({out['backbone_norm']}): Detectron2's res5 has the trunk's norm")
    return out


def _input_fields(dp: _Node) -> dict:
    """MMDetection decodes images BGR (mmcv); ``bgr_to_rgb`` flips them before the mean/std, which are in the
    order the network sees."""
    dp.type_in(("DetDataPreprocessor",))
    for key in ("mean", "std"):
        if dp.get(key, None) is None:
            raise SpecError(f"{dp.key(key)} is missing: an unnormalised input has no Detectron2 PIXEL_MEAN/STD")
    dp.expect("rgb_to_bgr", False, False, "the network would see BGR in the order bgr_to_rgb names")
    dp.expect("pad_value", 0, 0, "Detectron2 pads normalised images with 0")
    divisor = int(dp.get("pad_size_divisor", 1))
    return dict(pixel_mean=tuple(float(v) for v in dp.get("mean")), pixel_std=tuple(float(v) for v in dp.get("std")),
                input_format="RGB" if dp.get("bgr_to_rgb", False) else "BGR",
                size_divisibility=0 if divisor == 1 else divisor)


def _test_data_fields(ds: _Node) -> dict:
    metainfo = ds.get("metainfo", None) or {}
    classes = metainfo.get("classes")
    class_names = list(classes) if classes is not None else None
    dataset = "coco"
    if os.path.basename(str(ds.get("data_root", "")).rstrip("/")) == "us3l_shapes":
        ds.type_in(("CocoDataset",))
        if class_names != list(CLASS_NAMES):
            raise SpecError(f"{ds.key('metainfo.classes')} = {classes!r}: the embedded us3l_shapes set "
                            f"({ds.get('data_root')}) has the classes {list(CLASS_NAMES)}")
        dataset = "us3l_shapes"
    return dict(class_names=class_names, dataset=dataset, **_test_size(ds))


def _test_size(ds: _Node) -> dict:
    """The test pipeline's one ``Resize(scale=(a, b), keep_ratio=True)``: mmcv scales by min(max(a, b) / long
    side, min(a, b) / short side), Detectron2's ResizeShortestEdge(min, max) alike (both round with int(x + 0.5))."""
    pipeline = ds.get("pipeline")
    resizes = []
    for i, step in enumerate(pipeline):
        step = _Node(step, f"{ds.key('pipeline')}[{i}]")
        kind = step.type_in(TEST_TRANSFORMS)
        if kind == "Resize":
            resizes.append(step)
        elif kind == "LoadImageFromFile":
            step.expect("color_type", "color", "color", "Detectron2 reads 3-channel colour images")
    if len(resizes) != 1:
        raise SpecError(f"{ds.key('pipeline')} has {len(resizes)} Resize steps; one Resize(scale=(a, b), "
                        "keep_ratio=True) is what Detectron2's test resize can express")
    step = resizes[0]
    step.expect("keep_ratio", False, True, "Detectron2 resizes keeping the aspect ratio")
    step.absent("scale_factor", "Detectron2 resizes to a shorter / longer side, not by a factor")
    step.expect("interpolation", "bilinear", "bilinear", "Detectron2 resizes bilinearly")
    scale = step.get("scale")
    if not isinstance(scale, (list, tuple)) or len(scale) != 2:
        raise SpecError(f"{step.key('scale')} = {scale!r}: a pair (long side, short side) is what can be expressed")
    backend = step.get("backend", "cv2")  # mmcv's default
    if backend not in ("cv2", "pillow"):
        raise SpecError(f"{step.key('backend')} = {backend!r}: only cv2 and pillow bilinear resizing can be expressed")
    return dict(test_max_size=int(max(scale)), test_min_size=int(min(scale)), resize_backend=backend)


def _anchor_fields(ag: _Node) -> dict:
    ag.type_in(("AnchorGenerator",))
    for key in ("octave_base_scale", "scales_per_octave", "centers"):
        ag.absent(key, "Detectron2's anchors are sizes (scales x stride) centred on the grid with one offset")
    ag.expect("scale_major", True, True, "the checkpoint converter orders several anchor sizes as scale_major=True")
    strides = ag.get("strides")
    if any(not isinstance(s, int) for s in strides):
        raise SpecError(f"{ag.key('strides')} = {strides!r}: one integer stride per level can be expressed")
    if ag.get("base_sizes", None) is not None:
        ag.expect("base_sizes", None, strides, "Detectron2's anchors are scaled from the level stride")
    scales = ag.get("scales")
    return dict(anchor_strides=tuple(strides), anchor_ratios=tuple(float(r) for r in ag.get("ratios")),
                anchor_sizes=tuple(tuple(_num(s * stride) for s in scales) for stride in strides),
                anchor_offset=float(ag.get("center_offset", 0.0)))


def _coder_weights(head: _Node) -> tuple:
    """Detectron2 box-regression weights of ``head.bbox_coder`` (1 / target_stds). Both frameworks clip decoded
    boxes to the image (clip_border=True; Detectron2 clips proposals and final boxes)."""
    coder = head.child("bbox_coder")
    coder.type_in(("DeltaXYWHBBoxCoder",))
    if any(float(m) != 0.0 for m in coder.get("target_means", (0.0, 0.0, 0.0, 0.0))):
        raise SpecError(f"{coder.key('target_means')} = {coder.get('target_means')!r}: Detectron2's deltas have no "
                        "mean (all 0 can be expressed)")
    coder.expect("clip_border", True, True, "Detectron2 clips decoded boxes to the image")
    coder.expect("add_ctr_clamp", False, False, "Detectron2 does not clamp the centre shift")
    stds = coder.get("target_stds", (1.0, 1.0, 1.0, 1.0))
    if len(stds) != 4 or any(float(s) <= 0 for s in stds):
        raise SpecError(f"{coder.key('target_stds')} = {stds!r}: four positive stds can be expressed")
    return tuple(weights_from_stds(stds))


def _rpn_fields(rpn: _Node) -> dict:
    rpn.type_in(("RPNHead", "SlimmableRPNHead"))
    rpn.expect("num_convs", 1, 1, "Detectron2's StandardRPNHead has one 3x3 conv")
    rpn.child("loss_cls").expect("use_sigmoid", False, True, "Detectron2's objectness is one sigmoid logit per anchor")
    return dict(rpn_bbox_weights=_coder_weights(rpn), **_anchor_fields(rpn.child("anchor_generator")))


def _pooler(extractor: _Node) -> Pooler:
    extractor.type_in(("SingleRoIExtractor", "SlimmableSingleRoIExtractor"))
    extractor.expect("finest_scale", 56, 56, "Detectron2 maps RoIs to levels with canonical size 224 at level 4")
    layer = extractor.child("roi_layer")
    layer.type_in(("RoIAlign",))
    layer.expect("pool_mode", "avg", "avg", "Detectron2's ROIAlign averages")
    size = layer.get("output_size")
    if isinstance(size, (list, tuple)):
        if len(size) != 2 or size[0] != size[1]:
            raise SpecError(f"{layer.key('output_size')} = {size!r}: a square output can be expressed")
        size = size[0]
    # mmcv.ops.RoIAlign: sampling_ratio=0 (adaptive), aligned=True (the half-pixel shift) by default
    return Pooler(int(size), int(layer.get("sampling_ratio", 0)), bool(layer.get("aligned", True)))


def _box_fields(roi: _Node, layout: str) -> dict:
    head = roi.child("bbox_head")
    if layout == "fpn":
        head.type_in(("Shared2FCBBoxHead", "SlimmableShared2FCBBoxHead"))
        head.expect("num_shared_convs", 0, 0, "Detectron2's FPN box head is two FC layers")
        head.expect("with_avg_pool", False, False, "Detectron2's FPN box head flattens the pooled RoI")
    else:
        head.type_in(("BBoxHead",))  # res5 averaged, then the predictors (Detectron2's Res5ROIHeads)
    head.expect("reg_class_agnostic", False, False, "Detectron2 regresses per class (CLS_AGNOSTIC_BBOX_REG False)")
    head.child("loss_cls").expect("use_sigmoid", False, False, "Detectron2 scores boxes with a softmax")
    for key in ("with_cls", "with_reg"):
        head.expect(key, True, True, "Detectron2's box predictor scores and regresses")
    out = dict(num_classes=int(head.get("num_classes", 80)), box_bbox_weights=_coder_weights(head),
               box_pooler=_pooler(roi.child("bbox_roi_extractor")))
    if layout == "fpn":
        out["box_fc_dim"] = int(head.get("fc_out_channels", 1024))
    return out


def _mask_fields(roi: _Node, layout: str, box_pooler: Pooler) -> dict:
    head = roi.child("mask_head")
    head.type_in(("FCNMaskHead", "SlimmableFCNMaskHead"))
    head.expect("class_agnostic", False, False, "Detectron2 predicts a mask per class (CLS_AGNOSTIC_MASK False)")
    head.expect("conv_kernel_size", 3, 3, "Detectron2's mask head convs are 3x3")
    head.absent("norm_cfg", "Detectron2's mask head (NORM '') has no norm layers")
    upsample = head.child("upsample_cfg", dict(type="deconv", scale_factor=2))
    upsample.expect("type", _MISSING, "deconv", "Detectron2 upsamples masks with a 2x2 transposed conv")
    upsample.expect("scale_factor", 2, 2, "Detectron2 upsamples masks 2x")
    # C4: the mask head reads the box RoIs' res5 features (mmdet's shared RoI extractor)
    pooler = _pooler(roi.child("mask_roi_extractor")) if layout == "fpn" else box_pooler
    num = int(head.get("num_classes", 80))
    if num != int(roi.child("bbox_head").get("num_classes", 80)):
        raise SpecError(f"model.roi_head.mask_head.num_classes = {num} differs from model.roi_head.bbox_head's")
    return dict(mask_pooler=pooler, mask_conv_dim=int(head.get("conv_out_channels", 256)))


def _neck_fields(neck: _Node) -> dict:
    neck.type_in(("FPN", "SlimmableFPN"))
    for key, default, why in (("start_level", 0, "Detectron2's FPN starts at res2"),
                              ("end_level", -1, "Detectron2's FPN takes every backbone output"),
                              ("add_extra_convs", False, "Detectron2's p6 is a max-pool of p5 (LastLevelMaxPool)"),
                              ("relu_before_extra_convs", False, "Detectron2's FPN has no extra convs"),
                              ("no_norm_on_lateral", False, "Detectron2's FPN norms the lateral convs too"),
                              ("act_cfg", None, "Detectron2's FPN convs have no activation")):
        neck.expect(key, default, default, why)
    neck.child("upsample_cfg", dict(mode="nearest")).expect("mode", _MISSING, "nearest",
                                                           "Detectron2's FPN upsamples nearest")
    return dict(fpn_channels=int(neck.get("out_channels")), fpn_norm=_norm_name(neck, "norm_cfg", None, NORMS + ("",)))


def _nms_iou(node: _Node) -> float:
    nms = node.child("nms")
    nms.type_in(("nms",))
    nms.expect("class_agnostic", False, False, "Detectron2 suppresses per class (RPN: per level)")
    return float(nms.get("iou_threshold"))


def _test_cfg_fields(test: _Node, task: str) -> dict:
    rpn, rcnn = test.child("rpn"), test.child("rcnn")
    rpn.expect("min_bbox_size", -1, 0, "Detectron2 drops empty proposals (width and height > 0)")
    out = dict(rpn_pre_nms_topk=int(rpn.get("nms_pre")), rpn_post_nms_topk=int(rpn.get("max_per_img")),
               rpn_nms_thresh=_nms_iou(rpn), score_thresh=float(rcnn.get("score_thr")), nms_thresh=_nms_iou(rcnn),
               detections_per_image=int(rcnn.get("max_per_img")))
    if task == "mask":
        out["mask_thresh"] = float(rcnn.get("mask_thr_binary"))
    return out


# ------------------------------------------------------------------------------------------------------ writing
def template_path(spec: DetectorSpec) -> str:
    """This project's config of the spec's kind (dataset, task, layout, slimmable or not)."""
    name = TEMPLATE_NAMES.get((spec.dataset, spec.layout, spec.slimmable))
    if name is None:
        raise SpecError(f"no MMDetection config of this project builds a {'slimmable ' if spec.slimmable else ''}"
                        f"{spec.layout.upper()} detector on {spec.dataset!r} (datasets: coco, us3l_shapes; slimmable "
                        "detectors: FPN only)")
    stem = "mask-rcnn" if spec.task == "mask" else "faster-rcnn"
    path = os.path.join(checkout_root(), TEMPLATE_DIRS[spec.task], stem + name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"the template config {path} is missing (us3l.mmdet.spec writes configs from a "
                                "checkout's projects/)")
    return path


def _check_buildable(spec: DetectorSpec) -> None:
    if spec.stride_in_1x1:
        raise SpecError("stride_in_1x1: US3L backbones put the stride in the 3x3 conv (MMDetection style 'pytorch')")
    if tuple(spec.anchor_strides) != FEATURE_STRIDES[spec.layout]:
        raise SpecError(f"anchor strides {list(spec.anchor_strides)}: a {spec.layout.upper()} detector's anchors lie "
                        f"on strides {list(FEATURE_STRIDES[spec.layout])}")
    spec.anchor_scales()  # one list of scales on every level, or SpecError
    for name in ("rpn_bbox_weights", "box_bbox_weights"):
        if any(float(w) <= 0 for w in getattr(spec, name)):
            raise SpecError(f"{name} {list(getattr(spec, name))}: box-regression weights must be positive")
    if spec.class_names is not None and len(spec.class_names) != spec.num_classes:
        raise SpecError(f"{len(spec.class_names)} class names for {spec.num_classes} classes")
    if spec.dataset == "us3l_shapes" and (spec.num_classes != len(CLASS_NAMES) or spec.class_names not in
                                          (None, list(CLASS_NAMES))):
        raise SpecError(f"the embedded us3l_shapes set has the {len(CLASS_NAMES)} classes {list(CLASS_NAMES)}; the "
                        f"spec has {spec.num_classes} ({spec.class_names})")
    if spec.layout == "c4" and spec.task == "mask" and spec.mask_pooler != spec.box_pooler:
        raise SpecError(f"a C4 mask head reads the box RoIs' res5 features: mask_pooler {spec.mask_pooler} must be "
                        f"box_pooler {spec.box_pooler}")
    _check_norms(spec)


def _check_norms(spec: DetectorSpec) -> None:
    backbone = NORMS + ("FrozenBN",) if not spec.slimmable else ("BN", "SyncBN")
    if spec.backbone_norm not in backbone:
        raise SpecError(f"backbone_norm {spec.backbone_norm!r}: a {'slimmable ' if spec.slimmable else ''}US3L "
                        f"backbone takes {list(backbone)}")
    neck = ("", "BN", "SyncBN") if spec.slimmable else ("",) + NORMS
    if spec.layout == "fpn" and spec.fpn_norm not in neck:
        raise SpecError(f"fpn_norm {spec.fpn_norm!r}: a {'slimmable ' if spec.slimmable else ''}FPN takes {list(neck)}")
    # a slimmable spec's ``width`` is not written: MMDetection's slimmable detector runs at the top of its range
    # unless us3l.set_width says otherwise (tools/eval_widths.py --widths), a runtime choice, not a config value


def _norm_cfg(name: str) -> dict | None:
    if not name:
        return None
    if name == "FrozenBN":
        return dict(type="BN", requires_grad=False)
    return dict(type=name, requires_grad=True, **({"num_groups": GN_GROUPS} if name == "GN" else {}))


def _set(node, path: str, value) -> None:
    *parents, key = path.split(".")
    for p in parents:
        node = node[p]
    node[key] = value


def config_from_spec(spec: DetectorSpec, load_from: str | None = None) -> Config:
    """An MMDetection config building the detector ``spec`` describes: this project's template of its kind with
    every spec field set, ``load_from`` the converted checkpoint (nothing else loaded: no backbone ``init_cfg``)."""
    _check_buildable(spec)
    cfg = Config.fromfile(template_path(spec))
    model = cfg.model
    _write_backbone(model, spec)
    if spec.layout == "fpn":
        model.neck.norm_cfg = _norm_cfg(spec.fpn_norm)
    _write_heads(model, spec)
    _write_test_cfg(model.test_cfg, spec)
    for path, (value, _) in _derived(spec).items():
        _set(model, path, value)
    model.data_preprocessor.update(mean=list(spec.pixel_mean), std=list(spec.pixel_std),
                                   bgr_to_rgb=spec.input_format == "RGB",
                                   pad_size_divisor=max(1, int(spec.size_divisibility)))
    _write_data(cfg, spec)
    for key in ("pretrained", "norm_cfg"):  # the templates' own helper variables: stale in the written config
        cfg.pop(key, None)
    cfg.load_from = load_from
    return cfg


def _write_backbone(model, spec: DetectorSpec) -> None:
    parts = [model.backbone] + ([model.roi_head.shared_head] if spec.layout == "c4" else [])
    for part in parts:
        part.norm_cfg = _norm_cfg(spec.backbone_norm)
        part.init_cfg = None
        if not spec.slimmable:
            part.norm_eval = spec.backbone_norm == "FrozenBN" or part.get("norm_eval", True)


def _write_heads(model, spec: DetectorSpec) -> None:
    rpn, roi = model.rpn_head, model.roi_head
    rpn.anchor_generator = dict(type="AnchorGenerator", strides=list(spec.anchor_strides),
                                ratios=[float(r) for r in spec.anchor_ratios],
                                scales=[_num(s) for s in spec.anchor_scales()], center_offset=float(spec.anchor_offset))
    rpn.bbox_coder = _coder(spec.rpn_bbox_weights)
    roi.bbox_head.bbox_coder = _coder(spec.box_bbox_weights)
    roi.bbox_roi_extractor.roi_layer = _roi_layer(spec.box_pooler)
    if spec.task == "mask" and spec.layout == "fpn":
        roi.mask_roi_extractor.roi_layer = _roi_layer(spec.mask_pooler)


def _coder(weights) -> dict:
    return dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=target_stds(weights), clip_border=True)


def _roi_layer(pooler: Pooler) -> dict:
    return dict(type="RoIAlign", output_size=int(pooler.resolution), sampling_ratio=int(pooler.sampling_ratio),
                aligned=bool(pooler.aligned))


def _write_test_cfg(test, spec: DetectorSpec) -> None:
    test.rpn.update(nms_pre=int(spec.rpn_pre_nms_topk), max_per_img=int(spec.rpn_post_nms_topk),
                    nms=dict(type="nms", iou_threshold=float(spec.rpn_nms_thresh)), min_bbox_size=0)
    test.rcnn.update(score_thr=float(spec.score_thresh), nms=dict(type="nms", iou_threshold=float(spec.nms_thresh)),
                     max_per_img=int(spec.detections_per_image))
    if spec.task == "mask":
        test.rcnn.mask_thr_binary = float(spec.mask_thresh)


def _set_test_resize(pipeline, spec: DetectorSpec) -> None:
    for step in pipeline:
        if str(step.get("type")).split(".")[-1] == "Resize":
            step.update(scale=(int(spec.test_max_size), int(spec.test_min_size)), keep_ratio=True,
                        backend=spec.resize_backend)


def _write_data(cfg: Config, spec: DetectorSpec) -> None:
    """Class names into every split's dataset, the test size into the val / test pipelines (the training
    pipeline is the template's), the evaluators' metric prefix to the width."""
    for name in ("train_dataloader", "val_dataloader", "test_dataloader"):
        loader = cfg.get(name)
        if loader is None:
            continue
        if spec.class_names is not None:
            loader.dataset.metainfo = dict(classes=tuple(spec.class_names))
        if name != "train_dataloader":
            _set_test_resize(loader.dataset.pipeline, spec)
    if cfg.get("test_pipeline") is not None:
        _set_test_resize(cfg.test_pipeline, spec)
    if spec.class_names is not None and cfg.get("metainfo") is not None:
        cfg.metainfo = dict(classes=tuple(spec.class_names))
    for name in ("val_evaluator", "test_evaluator"):
        evaluators = cfg.get(name)
        for ev in evaluators if isinstance(evaluators, (list, tuple)) else [evaluators] if evaluators else []:
            ev.prefix = width_tag(spec.width)
