"""Detectron2 config <-> DetectorSpec (us3l.d2.spec): round trips over every template, values carried into their
keys, and the settings a spec cannot express refused by key (no training, no forward)."""
import os

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model

import us3l.d2  # noqa: F401  (registers the project's components and datasets)
from us3l.d2.config import load_config
from us3l.d2.spec import cfg_from_spec, spec_from_cfg, template_path
from us3l.detection.spec import Pooler, SpecError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DET = os.path.join(ROOT, "projects", "detection", "configs")
SEG = os.path.join(ROOT, "projects", "segmentation", "configs")
TEMPLATES = [os.path.join(folder, f"{prefix}_US-R50_{kind}_{size}.yaml")
             for folder, prefix in ((SEG, "mask_rcnn"), (DET, "faster_rcnn"))
             for kind in ("FPN_slimmable", "FPN", "C4") for size in ("tiny", "1x")]
MASK_FPN_TINY = os.path.join(SEG, "mask_rcnn_US-R50_FPN_tiny.yaml")
MASK_SLIM_TINY = os.path.join(SEG, "mask_rcnn_US-R50_FPN_slimmable_tiny.yaml")
MASK_C4_TINY = os.path.join(SEG, "mask_rcnn_US-R50_C4_tiny.yaml")


def _set(cfg, key, value):
    *path, last = key.split(".")
    node = cfg
    for part in path:
        node = node[part]
    assert last in node, key
    node[last] = value


def _shapes(cfg):
    cfg = cfg.clone()
    cfg.MODEL.DEVICE, cfg.MODEL.WEIGHTS = "cpu", ""
    torch.manual_seed(0)
    return {k: tuple(v.shape) for k, v in build_model(cfg).state_dict().items()}


def _name(path):
    return os.path.basename(path)[:-len(".yaml")]


@pytest.mark.parametrize("path", TEMPLATES, ids=_name)
def test_round_trip_and_same_model(path):
    cfg = load_config(path)
    spec = spec_from_cfg(cfg)
    out = cfg_from_spec(spec)
    assert os.path.samefile(template_path(spec), path)  # the kind's own template
    assert spec_from_cfg(out) == spec
    assert list(out.DATASETS.TEST) == list(cfg.DATASETS.TEST)
    assert out.MODEL.BACKBONE.NAME == cfg.MODEL.BACKBONE.NAME and out.MODEL.ROI_HEADS.NAME == cfg.MODEL.ROI_HEADS.NAME
    assert _shapes(out) == _shapes(cfg)


@pytest.mark.parametrize("path", [MASK_FPN_TINY, MASK_SLIM_TINY, MASK_C4_TINY], ids=_name)
def test_dumped_config_reloads_to_the_same_spec(path, tmp_path):
    spec = spec_from_cfg(load_config(path)).replace(width=0.5, score_thresh=0.25, anchor_offset=0.5)
    target = tmp_path / "out.yaml"
    target.write_text(cfg_from_spec(spec, weights="model.pth").dump())
    cfg = load_config(str(target))  # yacs type checks: every written value has its key's type
    assert spec_from_cfg(cfg) == spec and cfg.MODEL.WEIGHTS == "model.pth"


def test_values_read_from_the_templates():
    fpn = spec_from_cfg(load_config(MASK_FPN_TINY))
    assert (fpn.task, fpn.layout, fpn.slimmable, fpn.depth, fpn.num_classes) == ("mask", "fpn", False, 50, 4)
    assert fpn.dataset == "us3l_shapes" and fpn.input_format == "RGB"
    assert fpn.pixel_mean == (123.675, 116.28, 103.53) and fpn.pixel_std == (58.395, 57.12, 57.375)
    assert (fpn.fpn_channels, fpn.box_fc_dim, fpn.mask_conv_dim, fpn.fpn_norm, fpn.backbone_norm) == \
        (64, 256, 64, "BN", "BN")
    assert fpn.anchor_strides == (4, 8, 16, 32, 64) and fpn.anchor_sizes == ((8,), (16,), (32,), (64,), (128,))
    assert (fpn.size_divisibility, fpn.test_min_size, fpn.test_max_size, fpn.detections_per_image) == (32, 64, 128, 20)
    assert (fpn.rpn_pre_nms_topk, fpn.rpn_post_nms_topk) == (200, 100)
    assert fpn.box_pooler == Pooler(7, 0, True) and fpn.mask_pooler == Pooler(14, 0, True)
    c4 = spec_from_cfg(load_config(MASK_C4_TINY))
    assert c4.layout == "c4" and c4.anchor_strides == (16,) and c4.anchor_sizes == ((8, 16, 32, 64),)
    assert c4.size_divisibility == 0 and c4.box_pooler == Pooler(14, 0, True) and c4.mask_pooler == c4.box_pooler
    slim = spec_from_cfg(load_config(MASK_SLIM_TINY, ["MODEL.US3L.WIDTH_MULT", 0.5]))
    assert slim.slimmable and slim.width == 0.5 and slim.width_range == (0.25, 1.0) and slim.slim_neck_heads
    coco = spec_from_cfg(load_config(os.path.join(DET, "faster_rcnn_US-R50_FPN_1x.yaml")))
    assert coco.dataset == "coco" and len(coco.class_names) == 80 and coco.class_names[0] == "person"
    assert (coco.task, coco.backbone_norm, coco.test_min_size, coco.fpn_channels) == ("faster", "SyncBN", 800, 256)


def test_one_anchor_size_list_is_broadcast_to_every_level():
    cfg = load_config(MASK_FPN_TINY)
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[32, 64]]
    assert spec_from_cfg(cfg).anchor_sizes == ((32, 64),) * 5
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [16]  # a flat list, as Detectron2 accepts
    assert spec_from_cfg(cfg).anchor_sizes == ((16,),) * 5
    cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]] * 5  # per level, all the same: fine
    assert spec_from_cfg(cfg).anchor_ratios == (0.5, 1.0, 2.0)


def test_changed_values_carry_into_their_keys(monkeypatch):
    # 7 classes on the embedded set's name: consistent only while its 4 class names are unknown, as before any test
    # of this process loaded the set (known names are checked against NUM_CLASSES:
    # test_class_names_come_from_the_test_set)
    monkeypatch.delitem(MetadataCatalog.data, "us3l_shapes_val", raising=False)  # its plain dict (UserDict)
    base = spec_from_cfg(load_config(MASK_FPN_TINY))
    spec = base.replace(input_format="BGR", pixel_mean=tuple(reversed(base.pixel_mean)),
                        anchor_sizes=((16,), (32,), (64,), (128,), (256,)), box_bbox_weights=(20.0, 20.0, 10.0, 10.0),
                        score_thresh=0.3, test_min_size=100, test_max_size=200, num_classes=7, width=0.5,
                        class_names=None, box_pooler=Pooler(7, 2, False))
    cfg = cfg_from_spec(spec, weights="converted.pth")
    assert cfg.INPUT.FORMAT == "BGR"
    assert list(cfg.MODEL.PIXEL_MEAN) == [103.53, 116.28, 123.675]
    assert list(cfg.MODEL.PIXEL_STD) == list(base.pixel_std)
    assert [list(s) for s in cfg.MODEL.ANCHOR_GENERATOR.SIZES] == [[16], [32], [64], [128], [256]]
    assert list(cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS) == [20.0, 20.0, 10.0, 10.0]
    assert cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST == 0.3
    assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (100, 200)
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 7
    assert cfg.MODEL.US3L.WIDTH_MULT == 0.5
    assert cfg.MODEL.WEIGHTS == "converted.pth"
    assert (cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE, cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO) == ("ROIAlign", 2)
    assert cfg.MODEL.ROI_MASK_HEAD.POOLER_TYPE == "ROIAlignV2"
    assert spec_from_cfg(cfg) == spec
    shapes = _shapes(cfg)
    assert shapes["roi_heads.box_predictor.cls_score.weight"] == (8, 256)
    assert shapes["backbone.bottom_up.stem.conv1.weight"] == (32, 3, 7, 7)  # width 0.5


def test_every_other_field_carries_into_its_key():
    base = spec_from_cfg(load_config(MASK_FPN_TINY))
    spec = base.replace(depth=101, fpn_channels=32, box_fc_dim=128, mask_conv_dim=32, fpn_norm="",
                        backbone_norm="FrozenBN", stride_in_1x1=True, anchor_ratios=(1.0,), anchor_offset=0.5,
                        rpn_bbox_weights=(2.0, 2.0, 1.0, 1.0), rpn_pre_nms_topk=300, rpn_post_nms_topk=50,
                        rpn_nms_thresh=0.6, nms_thresh=0.4, detections_per_image=33, mask_pooler=Pooler(28, 1, False),
                        anchor_strides=(8, 16, 32, 64), anchor_sizes=((16,), (32,), (64,), (128,)),
                        resize_backend="cv2")
    assert cfg_from_spec(spec).INPUT.RESIZE_BACKEND == "cv2"
    m = cfg_from_spec(spec).MODEL
    assert (m.RESNETS.DEPTH, m.RESNETS.NORM, m.RESNETS.STRIDE_IN_1X1) == (101, "FrozenBN", True)
    assert (m.FPN.OUT_CHANNELS, m.FPN.NORM, m.ROI_BOX_HEAD.FC_DIM, m.ROI_MASK_HEAD.CONV_DIM) == (32, "", 128, 32)
    assert [list(r) for r in m.ANCHOR_GENERATOR.ASPECT_RATIOS] == [[1.0]] and m.ANCHOR_GENERATOR.OFFSET == 0.5
    assert list(m.RPN.IN_FEATURES) == ["p3", "p4", "p5", "p6"]
    assert list(m.RPN.BBOX_REG_WEIGHTS) == [2.0, 2.0, 1.0, 1.0]
    assert (m.RPN.PRE_NMS_TOPK_TEST, m.RPN.POST_NMS_TOPK_TEST, m.RPN.NMS_THRESH) == (300, 50, 0.6)
    assert m.ROI_HEADS.NMS_THRESH_TEST == 0.4 and m.MASK_ON
    assert (m.ROI_MASK_HEAD.POOLER_RESOLUTION, m.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO,
            m.ROI_MASK_HEAD.POOLER_TYPE) == (28, 1, "ROIAlign")
    out = cfg_from_spec(spec)
    assert out.TEST.DETECTIONS_PER_IMAGE == 33
    assert spec_from_cfg(out) == spec
    faster = cfg_from_spec(spec.replace(task="faster"))
    assert not faster.MODEL.MASK_ON and spec_from_cfg(faster).task == "faster"


def test_slimmable_values_carry():
    base = spec_from_cfg(load_config(MASK_SLIM_TINY))
    spec = base.replace(width=0.5, width_range=(0.5, 1.0), slim_neck_heads=False, depth=18)
    cfg = cfg_from_spec(spec)
    assert cfg.MODEL.BACKBONE.NAME == "build_us3l_slimmable_resnet_fpn_backbone"
    assert cfg.MODEL.RPN.HEAD_NAME == "US3LSlimmableRPNHead" and cfg.MODEL.ROI_HEADS.NAME == "US3LSlimmableROIHeads"
    assert cfg.MODEL.US3L.WIDTH_MULT == 0.5 and list(cfg.MODEL.US3L.WIDTH_RANGE) == [0.5, 1.0]
    assert cfg.MODEL.US3L.SLIM_NECK_HEADS is False
    assert (cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.RESNETS.RES2_OUT_CHANNELS) == (18, 64)
    assert list(cfg.MODEL.US3L.CALIBRATION.WIDTHS) == [1.0, 0.5]  # the template's 0.25 is outside the range
    assert spec_from_cfg(cfg) == spec


@pytest.mark.parametrize("key,value", [
    ("MODEL.ROI_BOX_HEAD.NUM_CONV", 4),
    ("MODEL.ROI_BOX_HEAD.NUM_FC", 1),
    ("MODEL.ROI_BOX_HEAD.POOLER_TYPE", "ROIPool"),
    ("MODEL.ROI_MASK_HEAD.POOLER_TYPE", "ROIAlignRotated"),
    ("MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", True),
    ("MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK", True),
    ("MODEL.ROI_MASK_HEAD.NUM_CONV", 2),
    ("INPUT.FORMAT", "L"),
    ("MODEL.RPN.CONV_DIMS", [64, 64]),
    ("MODEL.ROI_HEADS.NAME", "CascadeROIHeads"),
    ("MODEL.RPN.HEAD_NAME", "US3LSlimmableRPNHead"),
    ("MODEL.BACKBONE.NAME", "build_regnet_fpn_backbone"),
    ("MODEL.ANCHOR_GENERATOR.NAME", "RotatedAnchorGenerator"),
    ("MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", [[0.5, 1.0, 2.0], [1.0], [1.0], [1.0], [1.0]]),
    ("MODEL.ANCHOR_GENERATOR.SIZES", [[8], [16]]),
    ("MODEL.PROPOSAL_GENERATOR.MIN_SIZE", 4),
    ("MODEL.RESNETS.RES5_DILATION", 2),
    ("MODEL.FPN.FUSE_TYPE", "avg"),
])
def test_unexpressible_config_is_refused_by_key(key, value):
    cfg = load_config(MASK_FPN_TINY)
    spec_from_cfg(cfg)  # the template itself is accepted
    _set(cfg, key, value)
    with pytest.raises(SpecError, match=key.replace(".", r"\.")):
        spec_from_cfg(cfg)


def test_detectron2_own_backbone_is_full_width():
    cfg = load_config(MASK_FPN_TINY)
    cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    assert spec_from_cfg(cfg).layout == "fpn"
    cfg.MODEL.US3L.WIDTH_MULT = 0.5  # ignored by Detectron2's ResNet: a spec at 0.5 would be wrong
    with pytest.raises(SpecError, match=r"MODEL\.BACKBONE\.NAME"):
        spec_from_cfg(cfg)


def test_class_names_come_from_the_test_set():
    name = "us3l_shapes_spec_test"
    DatasetCatalog.register(name, lambda: [])
    MetadataCatalog.get(name).set(thing_classes=["a", "b", "c", "d"])
    try:
        cfg = load_config(MASK_FPN_TINY, ["DATASETS.TEST", f"('{name}',)"])
        spec = spec_from_cfg(cfg)
        assert spec.class_names == ["a", "b", "c", "d"] and spec.dataset == "us3l_shapes"
        cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
        with pytest.raises(SpecError, match=r"MODEL\.ROI_HEADS\.NUM_CLASSES"):
            spec_from_cfg(cfg)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    coco = spec_from_cfg(load_config(os.path.join(SEG, "mask_rcnn_US-R50_FPN_1x.yaml")))
    cfg_from_spec(coco)  # the set's own names: accepted
    with pytest.raises(SpecError, match=r"DATASETS\.TEST"):
        cfg_from_spec(coco.replace(class_names=list(reversed(coco.class_names))))


def test_unbuildable_spec_is_refused():
    c4 = spec_from_cfg(load_config(MASK_C4_TINY))
    cfg_from_spec(c4)
    with pytest.raises(SpecError, match="only the FPN layout is slimmable"):
        cfg_from_spec(c4.replace(slimmable=True))
    with pytest.raises(SpecError, match="size_divisibility"):
        cfg_from_spec(c4.replace(size_divisibility=32))
    with pytest.raises(SpecError, match=r"ROI_BOX_HEAD\.POOLER"):
        cfg_from_spec(c4.replace(mask_pooler=Pooler(14, 2, True)))
    fpn = spec_from_cfg(load_config(MASK_FPN_TINY))
    cfg_from_spec(fpn)
    for changes, key in (({"fpn_norm": "LN"}, r"MODEL\.FPN\.NORM"), ({"backbone_norm": "IN"}, r"MODEL\.RESNETS\.NORM"),
                         ({"width": 0.1}, r"MODEL\.US3L\.WIDTH_MULT"), ({"depth": 152}, r"MODEL\.RESNETS\.DEPTH"),
                         ({"anchor_strides": (8, 16, 32, 64, 128)}, r"MODEL\.RPN\.IN_FEATURES"),
                         ({"mask_thresh": 0.4}, "mask_thresh"), ({"dataset": "voc"}, "voc")):
        with pytest.raises(SpecError, match=key):
            cfg_from_spec(fpn.replace(**changes))
    slim = spec_from_cfg(load_config(MASK_SLIM_TINY))
    for changes, key in (({"fpn_norm": "GN"}, r"MODEL\.FPN\.NORM"), ({"backbone_norm": "FrozenBN"}, "RESNETS"),
                         ({"stride_in_1x1": True}, r"STRIDE_IN_1X1")):
        with pytest.raises(SpecError, match=key):
            cfg_from_spec(slim.replace(**changes))


def test_cv2_test_resize_is_detectron2s_size_rule_with_cv2_pixels():
    """INPUT.RESIZE_BACKEND cv2 (what a converted MMDetection detector was evaluated with): Detectron2's output
    size, mmcv's pixels (cv2 INTER_LINEAR, no antialiasing), which PIL's shrinking does not give."""
    import cv2
    import numpy as np

    from us3l.d2.resize import test_resize

    cfg = load_config(MASK_FPN_TINY)
    img = np.random.default_rng(0).integers(0, 256, (96, 120, 3), dtype=np.uint8)
    pil = test_resize(cfg).get_transform(img).apply_image(img)
    cfg.INPUT.RESIZE_BACKEND = "cv2"
    t = test_resize(cfg).get_transform(img)
    out = t.apply_image(img)
    assert out.shape == pil.shape == (64, 80, 3)
    assert np.array_equal(out, cv2.resize(img, (80, 64), interpolation=cv2.INTER_LINEAR))
    assert not np.array_equal(out, pil)
    cfg.INPUT.RESIZE_BACKEND = "opencv"
    with pytest.raises(ValueError, match="INPUT.RESIZE_BACKEND"):
        test_resize(cfg)
