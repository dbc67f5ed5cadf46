"""Detectron2 config <-> :class:`us3l.detection.spec.DetectorSpec`, for the checkpoint converters' ``--config``.

Why: a converted checkpoint is only useful with a config that makes the other framework compute what this one
did. :func:`spec_from_cfg` reads every inference-deciding value of a Detectron2 config (``add_us3l_config``
applied) into the neutral record and refuses, naming the key, whatever the record (or the other framework's
standard Faster / Mask R-CNN) cannot express; :func:`cfg_from_spec` writes a spec back over this project's
template YAML of its kind and refuses what Detectron2 cannot build with this project's components.

What Detectron2 decides without a config key (read from its 0.6 source): the input is padded to the backbone's
``size_divisibility`` (``FPN``: the stride of its last input feature, 32 for ``res5``; a plain ``ResNet``
backbone, as in C4: 0, i.e. no padding beyond the batch's largest image), masks are pasted at threshold 0.5
(``detector_postprocess`` / ``paste_masks_in_image`` defaults), and a C4 model's mask head runs on the box
pooler's ``res5`` features (``Res5ROIHeads``: one pooler, ``ROI_BOX_HEAD.POOLER_*``), so in a C4 spec the mask
pooler is the box pooler.
"""
from __future__ import annotations

import os

from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

from ..data.paths import checkout_root
from ..detection.spec import DetectorSpec, Pooler, SpecError
from ..models.resnet import ARCH_SETTINGS
from ..ops import check_width
from .config import add_us3l_config, us3l_width
from .resize import resize_backend
from .slimmable_backbone import SLIMMABLE_BACKBONE

FPN_BACKBONES = ("build_us3l_resnet_fpn_backbone", SLIMMABLE_BACKBONE, "build_resnet_fpn_backbone")
C4_BACKBONES = ("build_us3l_resnet_backbone", "build_resnet_backbone")
# Detectron2's own full-width components: they ignore MODEL.US3L.WIDTH_MULT
D2_FULL_WIDTH = ("build_resnet_fpn_backbone", "build_resnet_backbone", "Res5ROIHeads")
# (layout, slimmable) -> (backbone written, RPN heads accepted, ROI heads accepted); the first is written
COMPONENTS = {
    ("fpn", False): ("build_us3l_resnet_fpn_backbone", ("StandardRPNHead",), ("StandardROIHeads",)),
    ("fpn", True): (SLIMMABLE_BACKBONE, ("US3LSlimmableRPNHead",), ("US3LSlimmableROIHeads",)),
    ("c4", False): ("build_us3l_resnet_backbone", ("StandardRPNHead",), ("US3LRes5ROIHeads", "Res5ROIHeads")),
}
FPN_STAGES = ["res2", "res3", "res4", "res5"]
FPN_LEVELS = ("p2", "p3", "p4", "p5", "p6")  # FPN on res2..res5 + LastLevelMaxPool
D2_NORMS = ("", "BN", "SyncBN", "FrozenBN", "GN", "nnSyncBN", "naiveSyncBN", "naiveSyncBN_N")  # layers.get_norm
SLIMMABLE_NORMS = {"backbone_norm": ("BN", "SyncBN"), "fpn_norm": ("", "BN", "SyncBN")}
MASK_THRESH = 0.5  # detectron2.modeling.postprocessing.detector_postprocess(mask_threshold=0.5)
TEMPLATE_STEM = {("fpn", True): "US-R50_FPN_slimmable", ("fpn", False): "US-R50_FPN", ("c4", False): "US-R50_C4"}
TEMPLATE_SUFFIX = {"us3l_shapes": "tiny", "coco": "1x"}
TEMPLATE_FOLDER = {"mask": ("segmentation", "mask_rcnn"), "faster": ("detection", "faster_rcnn")}


# ------------------------------------------------------------------------------------------------ helpers
def _get(cfg: CfgNode, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _plain(value):
    """Lists and tuples (nested) as lists, for comparisons that do not care which one YAML gave."""
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def _expect(cfg: CfgNode, key: str, allowed, why: str) -> None:
    """``key`` must be one of ``allowed`` (lists compared as lists), else a SpecError naming it."""
    value = _get(cfg, key)
    if _plain(value) not in [_plain(a) for a in allowed]:
        raise SpecError(f"{key}={value!r}: {why}")


def _floats(values) -> tuple:
    return tuple(float(v) for v in values)


# ------------------------------------------------------------------------------------- config -> spec
def _layout(cfg: CfgNode) -> tuple[str, bool]:
    name = cfg.MODEL.BACKBONE.NAME
    if name in FPN_BACKBONES:
        return "fpn", name == SLIMMABLE_BACKBONE
    if name in C4_BACKBONES:
        return "c4", False
    raise SpecError(f"MODEL.BACKBONE.NAME={name!r}: not a ResNet backbone of this project or Detectron2 "
                    f"(FPN: {list(FPN_BACKBONES)}; C4: {list(C4_BACKBONES)})")


def _check_meta(cfg: CfgNode) -> None:
    _expect(cfg, "MODEL.META_ARCHITECTURE", ["GeneralizedRCNN"], "only a two-stage R-CNN has a spec")
    _expect(cfg, "MODEL.PROPOSAL_GENERATOR.NAME", ["RPN"], "the spec's proposals come from an RPN")
    _expect(cfg, "MODEL.PROPOSAL_GENERATOR.MIN_SIZE", [0], "the spec keeps every proposal (no minimum box size)")
    _expect(cfg, "MODEL.KEYPOINT_ON", [False], "the spec has no keypoint head")
    _expect(cfg, "MODEL.LOAD_PROPOSALS", [False], "the spec computes its proposals")
    _expect(cfg, "INPUT.FORMAT", ["RGB", "BGR"], "the spec takes RGB or BGR input")
    for key in ("MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD"):
        if len(_get(cfg, key)) != 3:
            raise SpecError(f"{key}={_get(cfg, key)!r}: one value per RGB / BGR channel")


def _check_resnet(cfg: CfgNode, layout: str) -> None:
    r = cfg.MODEL.RESNETS
    if r.DEPTH not in ARCH_SETTINGS:
        raise SpecError(f"MODEL.RESNETS.DEPTH={r.DEPTH!r}: US3L ResNets have depths {sorted(ARCH_SETTINGS)}")
    res2 = 256 if ARCH_SETTINGS[r.DEPTH][0] == "bottleneck" else 64
    standard = "the spec's ResNet is the standard one"
    _expect(cfg, "MODEL.RESNETS.RES2_OUT_CHANNELS", [res2], f"{standard} (ResNet-{r.DEPTH}: {res2})")
    for key, value in (("NUM_GROUPS", 1), ("WIDTH_PER_GROUP", 64), ("STEM_OUT_CHANNELS", 64), ("RES5_DILATION", 1),
                       ("DEFORM_ON_PER_STAGE", [False] * 4)):
        _expect(cfg, f"MODEL.RESNETS.{key}", [value], standard)
    if layout == "fpn":
        _expect(cfg, "MODEL.RESNETS.OUT_FEATURES", [FPN_STAGES], "the spec's FPN takes res2..res5")
        _expect(cfg, "MODEL.FPN.IN_FEATURES", [FPN_STAGES], "the spec's FPN takes res2..res5")
        _expect(cfg, "MODEL.FPN.FUSE_TYPE", ["sum"], "the spec's FPN sums its top-down path")
        _expect(cfg, "MODEL.ROI_HEADS.IN_FEATURES", [["p2", "p3", "p4", "p5"]], "the spec pools RoIs from p2..p5")
    else:
        _expect(cfg, "MODEL.RESNETS.OUT_FEATURES", [["res4"]], "a C4 backbone ends at res4")
        _expect(cfg, "MODEL.ROI_HEADS.IN_FEATURES", [["res4"]], "C4 RoIs are pooled from res4")


def _check_head_names(cfg: CfgNode, layout: str, slimmable: bool) -> None:
    _, rpn, roi = COMPONENTS[(layout, slimmable)]
    kind = f"{'slimmable ' if slimmable else ''}{layout.upper()} detector (MODEL.BACKBONE.NAME " \
           f"{cfg.MODEL.BACKBONE.NAME})"
    _expect(cfg, "MODEL.RPN.HEAD_NAME", rpn, f"a {kind} takes {list(rpn)}")
    _expect(cfg, "MODEL.ROI_HEADS.NAME", roi, f"a {kind} takes {list(roi)}")
    _expect(cfg, "MODEL.RPN.CONV_DIMS", [[-1]], "the spec's RPN head has one conv as wide as its input")
    _expect(cfg, "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", [False], "the spec regresses boxes per class")


def _check_box_mask_heads(cfg: CfgNode, layout: str) -> None:
    if layout == "fpn":
        _expect(cfg, "MODEL.ROI_BOX_HEAD.NAME", ["FastRCNNConvFCHead"], "the spec's box head is 2 fcs")
        _expect(cfg, "MODEL.ROI_BOX_HEAD.NUM_CONV", [0], "the spec's FPN box head has no convs (2 fcs)")
        _expect(cfg, "MODEL.ROI_BOX_HEAD.NUM_FC", [2], "the spec's FPN box head has 2 fcs")
    if not cfg.MODEL.MASK_ON:
        return
    convs = 4 if layout == "fpn" else 0
    _expect(cfg, "MODEL.ROI_MASK_HEAD.NAME", ["MaskRCNNConvUpsampleHead"], "the spec's mask head is the FCN one")
    _expect(cfg, "MODEL.ROI_MASK_HEAD.NUM_CONV", [convs], f"the spec's {layout.upper()} mask head has {convs} convs")
    _expect(cfg, "MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK", [False], "the spec predicts one mask per class")
    if layout == "fpn":
        _expect(cfg, "MODEL.ROI_MASK_HEAD.NORM", [""], "the spec's mask head convs have no norm")


def _width(cfg: CfgNode) -> float:
    try:
        width = us3l_width(cfg)
    except (KeyError, ValueError) as e:
        raise SpecError(str(e).strip("'\"")) from None
    if width != 1.0:
        for key in ("MODEL.BACKBONE.NAME", "MODEL.ROI_HEADS.NAME"):
            if _get(cfg, key) in D2_FULL_WIDTH:
                raise SpecError(f"{key}={_get(cfg, key)!r} is Detectron2's own full-width component but "
                                f"MODEL.US3L.WIDTH_MULT is {width}: use this project's width-sized one")
    return width


def _per_level(cfg: CfgNode, key: str, levels: int) -> list:
    """``ANCHOR_GENERATOR.SIZES`` / ``ASPECT_RATIOS`` per feature level, broadcast as Detectron2 does
    (``anchor_generator._broadcast_params``: a flat list or a single list serves every level)."""
    params = _plain(_get(cfg, key))
    if not params:
        raise SpecError(f"{key} is empty")
    if not isinstance(params[0], list):
        params = [params]
    if len(params) == 1:
        params = params * levels
    if len(params) != levels:
        raise SpecError(f"{key}: {len(params)} lists for {levels} RPN feature levels (MODEL.RPN.IN_FEATURES)")
    return params


def _anchor_strides(cfg: CfgNode, layout: str) -> tuple:
    features = list(cfg.MODEL.RPN.IN_FEATURES)
    if layout == "c4":
        _expect(cfg, "MODEL.RPN.IN_FEATURES", [["res4"]], "a C4 RPN runs on res4")
        return (16,)
    levels = [FPN_LEVELS.index(f) if f in FPN_LEVELS else -1 for f in features]
    if not features or min(levels) < 0 or levels != sorted(set(levels)):
        raise SpecError(f"MODEL.RPN.IN_FEATURES={features!r}: FPN levels among {list(FPN_LEVELS)}, finest first")
    return tuple(2 ** int(f[1:]) for f in features)


def _anchors(cfg: CfgNode, layout: str) -> dict:
    _expect(cfg, "MODEL.ANCHOR_GENERATOR.NAME", ["DefaultAnchorGenerator"],
            "the spec's anchors are axis-aligned (its ANGLES are unused, as in DefaultAnchorGenerator)")
    strides = _anchor_strides(cfg, layout)
    sizes = _per_level(cfg, "MODEL.ANCHOR_GENERATOR.SIZES", len(strides))
    ratios = _per_level(cfg, "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", len(strides))
    if any(r != ratios[0] for r in ratios):
        raise SpecError(f"MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS={ratios!r}: the spec has one list of aspect ratios "
                        "for every level")
    return {"anchor_strides": strides, "anchor_sizes": tuple(tuple(s) for s in sizes),
            "anchor_ratios": _floats(ratios[0]), "anchor_offset": float(cfg.MODEL.ANCHOR_GENERATOR.OFFSET)}


def _pooler(cfg: CfgNode, head: str) -> Pooler:
    kind = _get(cfg, f"MODEL.{head}.POOLER_TYPE")
    if kind not in ("ROIAlign", "ROIAlignV2"):
        raise SpecError(f"MODEL.{head}.POOLER_TYPE={kind!r}: the spec pools with RoIAlign (ROIAlign: not aligned, "
                        "ROIAlignV2: aligned)")
    resolution = _get(cfg, f"MODEL.{head}.POOLER_RESOLUTION")
    if isinstance(resolution, (list, tuple)):
        if len(set(resolution)) != 1:
            raise SpecError(f"MODEL.{head}.POOLER_RESOLUTION={resolution!r}: the spec's RoIs are square")
        resolution = resolution[0]
    return Pooler(int(resolution), int(_get(cfg, f"MODEL.{head}.POOLER_SAMPLING_RATIO")), kind == "ROIAlignV2")


def _poolers(cfg: CfgNode, layout: str) -> dict:
    box = _pooler(cfg, "ROI_BOX_HEAD")
    if not cfg.MODEL.MASK_ON:
        return {"box_pooler": box}
    # C4: Res5ROIHeads runs the mask head on the box pooler's res5 features
    mask = _pooler(cfg, "ROI_MASK_HEAD") if layout == "fpn" else Pooler(box.resolution, box.sampling_ratio,
                                                                        box.aligned)
    return {"box_pooler": box, "mask_pooler": mask}


def _dataset(cfg: CfgNode) -> dict:
    test = list(cfg.DATASETS.TEST)
    if not test:
        raise SpecError("DATASETS.TEST is empty: the spec names the set its detector evaluates on")
    name = test[0]
    names = getattr(MetadataCatalog.get(name), "thing_classes", None) if name in DatasetCatalog.list() else None
    names = list(names) if names else None
    if names is not None and len(names) != cfg.MODEL.ROI_HEADS.NUM_CLASSES:
        raise SpecError(f"MODEL.ROI_HEADS.NUM_CLASSES={cfg.MODEL.ROI_HEADS.NUM_CLASSES} but DATASETS.TEST "
                        f"{name!r} has {len(names)} classes")
    return {"dataset": "us3l_shapes" if name.startswith("us3l_shapes") else "coco", "class_names": names}


def _size_divisibility(cfg: CfgNode, layout: str) -> int:
    """What Detectron2's backbone pads to: FPN ``strides[-1]`` of its inputs (res5: 32); ResNet (C4): 0."""
    return 2 ** int(cfg.MODEL.FPN.IN_FEATURES[-1][len("res"):]) if layout == "fpn" else 0


def spec_from_cfg(cfg: CfgNode) -> DetectorSpec:
    """The :class:`DetectorSpec` of a Detectron2 config (``add_us3l_config`` applied, ``_BASE_`` merged).

    Every value is read from ``cfg``; a setting the spec cannot express is a :class:`SpecError` naming its key.
    """
    m = cfg.MODEL
    layout, slimmable = _layout(cfg)
    _check_meta(cfg)
    _check_resnet(cfg, layout)
    _check_head_names(cfg, layout, slimmable)
    _check_box_mask_heads(cfg, layout)
    return DetectorSpec(
        task="mask" if m.MASK_ON else "faster", layout=layout, depth=int(m.RESNETS.DEPTH),
        num_classes=int(m.ROI_HEADS.NUM_CLASSES), slimmable=slimmable, width=_width(cfg),
        width_range=_floats(m.US3L.WIDTH_RANGE), slim_neck_heads=bool(m.US3L.SLIM_NECK_HEADS), **_dataset(cfg),
        fpn_channels=int(m.FPN.OUT_CHANNELS), fpn_norm=m.FPN.NORM, backbone_norm=m.RESNETS.NORM,
        box_fc_dim=int(m.ROI_BOX_HEAD.FC_DIM), mask_conv_dim=int(m.ROI_MASK_HEAD.CONV_DIM),
        stride_in_1x1=bool(m.RESNETS.STRIDE_IN_1X1),
        input_format=cfg.INPUT.FORMAT, pixel_mean=_floats(m.PIXEL_MEAN), pixel_std=_floats(m.PIXEL_STD),
        size_divisibility=_size_divisibility(cfg, layout), test_min_size=int(cfg.INPUT.MIN_SIZE_TEST),
        test_max_size=int(cfg.INPUT.MAX_SIZE_TEST), resize_backend=resize_backend(cfg), **_anchors(cfg, layout),
        rpn_bbox_weights=_floats(m.RPN.BBOX_REG_WEIGHTS), box_bbox_weights=_floats(m.ROI_BOX_HEAD.BBOX_REG_WEIGHTS),
        **_poolers(cfg, layout),
        rpn_pre_nms_topk=int(m.RPN.PRE_NMS_TOPK_TEST), rpn_post_nms_topk=int(m.RPN.POST_NMS_TOPK_TEST),
        rpn_nms_thresh=float(m.RPN.NMS_THRESH), score_thresh=float(m.ROI_HEADS.SCORE_THRESH_TEST),
        nms_thresh=float(m.ROI_HEADS.NMS_THRESH_TEST), detections_per_image=int(cfg.TEST.DETECTIONS_PER_IMAGE),
        mask_thresh=MASK_THRESH)


# ------------------------------------------------------------------------------------- spec -> config
def _repo_root() -> str:
    """The checkout holding ``projects/`` (its template configs), as ``us3l.pipeline.main_job.repo_root``."""
    root = checkout_root()
    if not os.path.isdir(os.path.join(root, "projects")):
        raise FileNotFoundError(f"the Detectron2 template configs (projects/*/configs) are not under {root}: "
                                "install with `pip install -e .` from a checkout")
    return root


def template_path(spec: DetectorSpec) -> str:
    """This project's YAML for the spec's kind (task, layout, slimmable) and dataset."""
    folder, prefix = TEMPLATE_FOLDER[spec.task]
    name = f"{prefix}_{TEMPLATE_STEM[(spec.layout, spec.slimmable)]}_{TEMPLATE_SUFFIX[spec.dataset]}.yaml"
    return os.path.join(_repo_root(), "projects", folder, "configs", name)


def _check_kind(spec: DetectorSpec) -> None:
    if (spec.layout, spec.slimmable) not in COMPONENTS:
        raise SpecError(f"a slimmable {spec.layout.upper()} detector: only the FPN layout is slimmable in "
                        f"Detectron2 here (MODEL.BACKBONE.NAME {SLIMMABLE_BACKBONE})")
    if spec.dataset not in TEMPLATE_SUFFIX:
        raise SpecError(f"dataset {spec.dataset!r}: Detectron2 templates exist for {list(TEMPLATE_SUFFIX)}")
    if spec.depth not in ARCH_SETTINGS:
        raise SpecError(f"MODEL.RESNETS.DEPTH={spec.depth}: US3L ResNets have depths {sorted(ARCH_SETTINGS)}")
    if spec.class_names is not None and len(spec.class_names) != spec.num_classes:
        raise SpecError(f"MODEL.ROI_HEADS.NUM_CLASSES={spec.num_classes} but the spec names "
                        f"{len(spec.class_names)} classes")


def _check_norms(spec: DetectorSpec) -> None:
    norms = {"backbone_norm": ("MODEL.RESNETS.NORM", spec.backbone_norm)}
    if spec.layout == "fpn":
        norms["fpn_norm"] = ("MODEL.FPN.NORM", spec.fpn_norm)
    for field, (key, norm) in norms.items():
        allowed = SLIMMABLE_NORMS[field] if spec.slimmable else D2_NORMS
        if norm not in allowed:
            raise SpecError(f"{key}={norm!r}: a {'slimmable ' if spec.slimmable else ''}Detectron2 detector here "
                            f"takes {list(allowed)}")
    if spec.slimmable and spec.stride_in_1x1:
        raise SpecError("MODEL.RESNETS.STRIDE_IN_1X1=True: the slimmable ResNet puts the stride in the 3x3 conv")


def _check_fixed(spec: DetectorSpec) -> None:
    """What Detectron2 decides without a config key must be what the spec says."""
    expected = 32 if spec.layout == "fpn" else 0
    if spec.size_divisibility != expected:
        raise SpecError(f"size_divisibility {spec.size_divisibility}: Detectron2 pads a {spec.layout.upper()} "
                        f"detector's input to its backbone's size_divisibility, {expected}; no config key sets it")
    if spec.task != "mask":
        return
    if spec.mask_thresh != MASK_THRESH:
        raise SpecError(f"mask_thresh {spec.mask_thresh}: Detectron2 pastes masks at {MASK_THRESH} "
                        "(detector_postprocess); no config key sets it")
    if spec.layout == "c4" and spec.mask_pooler != spec.box_pooler:
        raise SpecError(f"mask pooler {spec.mask_pooler} differs from the box pooler {spec.box_pooler}: a C4 "
                        "Detectron2 detector (Res5ROIHeads) runs its mask head on the box pooler's features "
                        "(MODEL.ROI_BOX_HEAD.POOLER_*)")


def _check_width(spec: DetectorSpec) -> tuple[float, float]:
    try:
        lo, hi = _floats(spec.width_range)
        check_width(spec.width, (lo, hi))
    except (TypeError, ValueError) as e:
        raise SpecError(f"MODEL.US3L.WIDTH_MULT / WIDTH_RANGE: {e}") from None
    return lo, hi


def _write_backbone(cfg: CfgNode, spec: DetectorSpec) -> None:
    m = cfg.MODEL
    lo, hi = _check_width(spec)
    m.BACKBONE.NAME, rpn, roi = COMPONENTS[(spec.layout, spec.slimmable)]
    m.RPN.HEAD_NAME, m.ROI_HEADS.NAME = rpn[0], roi[0]
    m.MASK_ON = spec.task == "mask"
    m.US3L.WIDTH_MULT, m.US3L.WIDTH_RANGE = float(spec.width), [lo, hi]
    m.US3L.SLIM_NECK_HEADS = bool(spec.slim_neck_heads)
    calibration = [w for w in m.US3L.CALIBRATION.WIDTHS if lo - 1e-9 <= float(w) <= hi + 1e-9]
    m.US3L.CALIBRATION.WIDTHS = calibration  # the template's, less any outside the spec's range
    m.RESNETS.DEPTH = int(spec.depth)
    m.RESNETS.RES2_OUT_CHANNELS = 256 if ARCH_SETTINGS[spec.depth][0] == "bottleneck" else 64
    m.RESNETS.NORM, m.RESNETS.STRIDE_IN_1X1 = spec.backbone_norm, bool(spec.stride_in_1x1)
    m.FPN.OUT_CHANNELS, m.FPN.NORM = int(spec.fpn_channels), spec.fpn_norm


def _write_input(cfg: CfgNode, spec: DetectorSpec) -> None:
    cfg.INPUT.FORMAT = spec.input_format
    cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD = list(_floats(spec.pixel_mean)), list(_floats(spec.pixel_std))
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = int(spec.test_min_size), int(spec.test_max_size)
    cfg.INPUT.RESIZE_BACKEND = spec.resize_backend


def _rpn_features(spec: DetectorSpec) -> list[str]:
    if spec.layout == "c4":
        if tuple(spec.anchor_strides) != (16,):
            raise SpecError(f"anchor strides {list(spec.anchor_strides)}: a C4 RPN runs on res4 (stride 16)")
        return ["res4"]
    levels = {2 ** int(f[1:]): f for f in FPN_LEVELS}
    strides = list(spec.anchor_strides)
    if any(s not in levels for s in strides) or strides != sorted(set(strides)):
        raise SpecError(f"anchor strides {strides}: the FPN has levels of strides {sorted(levels)}, finest first "
                        "(MODEL.RPN.IN_FEATURES)")
    return [levels[s] for s in strides]


def _write_rpn(cfg: CfgNode, spec: DetectorSpec) -> None:
    m = cfg.MODEL
    m.RPN.IN_FEATURES = _rpn_features(spec)
    m.ANCHOR_GENERATOR.NAME = "DefaultAnchorGenerator"
    m.ANCHOR_GENERATOR.SIZES = [list(s) for s in spec.anchor_sizes]
    m.ANCHOR_GENERATOR.ASPECT_RATIOS = [list(_floats(spec.anchor_ratios))]
    m.ANCHOR_GENERATOR.OFFSET = float(spec.anchor_offset)
    m.RPN.CONV_DIMS = [-1]
    m.RPN.BBOX_REG_WEIGHTS = _floats(spec.rpn_bbox_weights)
    m.RPN.PRE_NMS_TOPK_TEST, m.RPN.POST_NMS_TOPK_TEST = int(spec.rpn_pre_nms_topk), int(spec.rpn_post_nms_topk)
    m.RPN.NMS_THRESH = float(spec.rpn_nms_thresh)


def _write_pooler(cfg: CfgNode, head: str, pooler: Pooler) -> None:
    node = cfg.MODEL[head]
    node.POOLER_RESOLUTION, node.POOLER_SAMPLING_RATIO = int(pooler.resolution), int(pooler.sampling_ratio)
    node.POOLER_TYPE = "ROIAlignV2" if pooler.aligned else "ROIAlign"


def _write_roi_heads(cfg: CfgNode, spec: DetectorSpec) -> None:
    m = cfg.MODEL
    m.ROI_HEADS.NUM_CLASSES = int(spec.num_classes)
    m.ROI_HEADS.SCORE_THRESH_TEST, m.ROI_HEADS.NMS_THRESH_TEST = float(spec.score_thresh), float(spec.nms_thresh)
    cfg.TEST.DETECTIONS_PER_IMAGE = int(spec.detections_per_image)
    m.ROI_BOX_HEAD.FC_DIM = int(spec.box_fc_dim)
    m.ROI_BOX_HEAD.BBOX_REG_WEIGHTS = _floats(spec.box_bbox_weights)
    m.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = False
    _write_pooler(cfg, "ROI_BOX_HEAD", spec.box_pooler)
    m.ROI_MASK_HEAD.CONV_DIM = int(spec.mask_conv_dim)
    m.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK = False
    _write_pooler(cfg, "ROI_MASK_HEAD", spec.mask_pooler)  # C4: unused, the same as the box pooler
    if spec.layout == "fpn":
        m.ROI_BOX_HEAD.NAME, m.ROI_BOX_HEAD.NUM_CONV, m.ROI_BOX_HEAD.NUM_FC = "FastRCNNConvFCHead", 0, 2
        m.ROI_MASK_HEAD.NUM_CONV = 4
    else:
        m.ROI_MASK_HEAD.NUM_CONV = 0


def _check_class_names(cfg: CfgNode, spec: DetectorSpec) -> None:
    """A Detectron2 config takes its class names from DATASETS.TEST; they must be the spec's where both are known."""
    name = cfg.DATASETS.TEST[0]
    known = getattr(MetadataCatalog.get(name), "thing_classes", None) if name in DatasetCatalog.list() else None
    if spec.class_names is not None and known and list(known) != list(spec.class_names):
        raise SpecError(f"DATASETS.TEST {name!r} names the classes {list(known)}, the spec {list(spec.class_names)}; "
                        "a Detectron2 config cannot rename them")


def cfg_from_spec(spec: DetectorSpec, weights: str = "") -> CfgNode:
    """A Detectron2 config building the detector ``spec`` describes, loading ``weights`` (``MODEL.WEIGHTS``).

    Starts from this project's template for the kind (:func:`template_path`: solver, data loader, evaluation
    set) and writes every spec field into its key; a spec Detectron2 cannot build here is a :class:`SpecError`.
    """
    _check_kind(spec)
    _check_norms(spec)
    _check_fixed(spec)
    cfg = get_cfg()
    add_us3l_config(cfg)
    cfg.merge_from_file(template_path(spec))
    cfg.MODEL.WEIGHTS = weights
    _write_backbone(cfg, spec)
    _write_input(cfg, spec)
    _write_rpn(cfg, spec)
    _write_roi_heads(cfg, spec)
    _check_class_names(cfg, spec)
    return cfg
