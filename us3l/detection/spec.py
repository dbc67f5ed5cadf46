"""A detector described without a framework: what a converted checkpoint needs written in the other framework's
config for it to compute the same thing.

Why: Detectron2 and MMDetection spell the same Faster / Mask R-CNN in different words (``MODEL.PIXEL_MEAN`` +
``INPUT.FORMAT`` vs ``data_preprocessor.mean`` + ``bgr_to_rgb``; anchor ``SIZES`` vs ``scales`` x ``strides``;
box-coder weights vs target stds). Each plugin reads its own config into a :class:`DetectorSpec`
(``us3l.d2.spec``, ``us3l.mmdet.spec``) and writes one from it, so a converter carries every convention through
one neutral record, and a convention one side cannot express is an error naming it, never a guess.

All values are the ones that decide inference. Channel counts are the detector's own (for a width-sized plain
detector: the counts at its width; for a slimmable one: the full-width counts).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from ..errors import US3LError

TASKS = ("faster", "mask")
LAYOUTS = ("fpn", "c4")
INPUT_FORMATS = ("RGB", "BGR")
RESIZE_BACKENDS = ("pillow", "cv2")


class SpecError(US3LError, ValueError):
    """A config (or a checkpoint beside it) describes something the other framework cannot build as is."""


@dataclasses.dataclass
class Pooler:
    """RoIAlign of one head: output size, sampling ratio (0: adaptive), ``aligned`` (the half-pixel shift:
    Detectron2 ``ROIAlignV2`` / mmcv ``RoIAlign(aligned=True)``)."""
    resolution: int
    sampling_ratio: int = 0
    aligned: bool = True


@dataclasses.dataclass
class DetectorSpec:
    task: str                      # "faster" | "mask"
    layout: str                    # "fpn" | "c4"
    depth: int                     # ResNet depth
    num_classes: int
    slimmable: bool = False        # one checkpoint for every width (else a plain detector at ``width``)
    width: float = 1.0             # plain: its width; slimmable: the width it evaluates at by default
    width_range: tuple = (0.25, 1.0)
    slim_neck_heads: bool = True   # slimmable: neck and heads slimmed with the backbone
    class_names: Optional[list] = None
    dataset: str = "coco"          # the evaluation set: "coco" or "us3l_shapes" (the embedded one)
    # channels (as the detector has them)
    fpn_channels: int = 256
    fpn_norm: str = ""             # "" (none), "BN", "SyncBN", "GN"
    backbone_norm: str = "BN"
    box_fc_dim: int = 1024
    mask_conv_dim: int = 256
    stride_in_1x1: bool = False    # False: stride in the 3x3 conv (torchvision / MMDetection "pytorch" style)
    # input
    input_format: str = "RGB"      # channel order the network sees
    pixel_mean: tuple = (123.675, 116.28, 103.53)  # in ``input_format`` order
    pixel_std: tuple = (58.395, 57.12, 57.375)
    size_divisibility: int = 32
    test_min_size: int = 800       # shorter side at test time ...
    test_max_size: int = 1333      # ... unless the longer one would exceed this
    resize_backend: str = "pillow"  # bilinear resize by PIL (antialiased when shrinking, Detectron2's only one) or cv2
    # anchors and box coders
    anchor_strides: tuple = (4, 8, 16, 32, 64)
    anchor_sizes: tuple = ((32,), (64,), (128,), (256,), (512,))  # per level, in pixels
    anchor_ratios: tuple = (0.5, 1.0, 2.0)
    anchor_offset: float = 0.0
    rpn_bbox_weights: tuple = (1.0, 1.0, 1.0, 1.0)   # Detectron2 weights; MMDetection target_stds = 1 / w
    box_bbox_weights: tuple = (10.0, 10.0, 5.0, 5.0)
    # RoI heads
    box_pooler: Pooler = dataclasses.field(default_factory=lambda: Pooler(7))
    mask_pooler: Pooler = dataclasses.field(default_factory=lambda: Pooler(14))
    # test-time thresholds
    rpn_pre_nms_topk: int = 1000
    rpn_post_nms_topk: int = 1000
    rpn_nms_thresh: float = 0.7
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_image: int = 100
    mask_thresh: float = 0.5

    def __post_init__(self):
        for name, value, allowed in (("task", self.task, TASKS), ("layout", self.layout, LAYOUTS),
                                     ("input_format", self.input_format, INPUT_FORMATS),
                                     ("resize_backend", self.resize_backend, RESIZE_BACKENDS)):
            if value not in allowed:
                raise SpecError(f"{name} {value!r} is not one of {allowed}")
        if len(self.anchor_sizes) != len(self.anchor_strides):
            raise SpecError(f"{len(self.anchor_sizes)} anchor size lists for {len(self.anchor_strides)} feature "
                            "levels")

    def anchor_scales(self) -> list:
        """MMDetection's ``scales`` (anchor size / level stride), which must be the same on every level: Detectron2
        can give each level its own sizes, MMDetection's AnchorGenerator cannot."""
        per_level = [tuple(round(s / stride, 6) for s in sizes)
                     for sizes, stride in zip(self.anchor_sizes, self.anchor_strides)]
        if len(set(per_level)) != 1:
            raise SpecError(f"anchor sizes {[list(s) for s in self.anchor_sizes]} on strides "
                            f"{list(self.anchor_strides)} are not one list of scales x stride; MMDetection's "
                            "AnchorGenerator needs the same scales on every level")
        return list(per_level[0])

    def replace(self, **changes) -> "DetectorSpec":
        return dataclasses.replace(self, **changes)


def target_stds(weights) -> list:
    """MMDetection ``target_stds`` of Detectron2 box-regression ``weights`` (deltas divided by w = times 1/w)."""
    return [round(1.0 / float(w), 10) for w in weights]


def weights_from_stds(stds) -> list:
    return [round(1.0 / float(s), 10) for s in stds]


def check_against_checkpoint(spec: DetectorSpec, state) -> None:
    """Refuse a config that disagrees with the weights it is written for: class count and FPN width, read off
    the tensors (Detectron2 or MMDetection names)."""
    for key in ("roi_heads.box_predictor.cls_score.weight", "roi_head.bbox_head.fc_cls.weight"):
        if key in state:
            k = int(state[key].shape[0]) - 1
            if k != spec.num_classes:
                raise SpecError(f"the config says {spec.num_classes} classes but the checkpoint's classifier "
                                f"{key} scores {k} (+ background)")
    if spec.layout == "fpn":
        for key in ("backbone.fpn_output2.weight", "neck.fpn_convs.0.conv.weight"):
            if key in state and int(state[key].shape[0]) != spec.fpn_channels:
                raise SpecError(f"the config builds an FPN of {spec.fpn_channels} channels but the checkpoint's "
                                f"{key} has {int(state[key].shape[0])}")
