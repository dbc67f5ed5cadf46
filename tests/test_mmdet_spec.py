"""us3l.mmdet.spec: an MMDetection config read into a DetectorSpec and written back from it.

Every template the writer uses round-trips (config -> spec -> config file -> the same spec) and the written
config builds a detector with the template's own state-dict keys and shapes; values the spec changes land in
the keys MMDetection reads; what the spec cannot express is refused naming the key.
"""
import copy
import os

import pytest
from ckpt_helpers import ROOT
from mmengine.config import Config

from us3l.data.synthetic import CLASS_NAMES
from us3l.detection.spec import DetectorSpec, Pooler, SpecError
from us3l.mmdet.spec import config_from_spec, spec_from_config

SEG, DET = "projects/segmentation/mmdet_configs", "projects/detection/mmdet_configs"
TEMPLATES = [f"{d}/{net}_us-r50_{kind}.py" for d, net in ((SEG, "mask-rcnn"), (DET, "faster-rcnn"))
             for kind in ("fpn_slimmable_tiny", "fpn_1x_coco_tiny", "c4_1x_coco_tiny", "fpn_slimmable_1x",
                          "fpn_1x_coco", "c4_1x_coco")]
MASK_FPN_TINY = f"{SEG}/mask-rcnn_us-r50_fpn_1x_coco_tiny.py"
MASK_FPN_COCO = f"{SEG}/mask-rcnn_us-r50_fpn_1x_coco.py"


def _load(rel: str) -> Config:
    return Config.fromfile(os.path.join(ROOT, rel))


def _shapes(cfg: Config) -> dict:
    """``{state-dict key: shape}`` of the detector ``cfg.model`` builds (no pretrained file loaded)."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    import us3l.mmdet  # noqa: F401  (registers the US3L types)

    register_all_modules()
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.backbone.init_cfg = None
    if model_cfg.roi_head.get("shared_head"):
        model_cfg.roi_head.shared_head.init_cfg = None
    return {k: tuple(v.shape) for k, v in MODELS.build(model_cfg).state_dict().items()}


def _written(spec: DetectorSpec, tmp_path, **kwargs) -> Config:
    """The config ``config_from_spec`` writes, as read back from the file it dumps to."""
    path = str(tmp_path / "converted.py")
    config_from_spec(spec, **kwargs).dump(path)
    return Config.fromfile(path)


@pytest.mark.parametrize("template", TEMPLATES, ids=[os.path.basename(t)[:-3] for t in TEMPLATES])
def test_template_round_trip_and_same_detector(template, tmp_path):
    original = _load(template)
    spec = spec_from_config(original)
    written = _written(spec, tmp_path, load_from="converted.pth")
    assert spec_from_config(written) == spec
    assert written.load_from == "converted.pth" and written.model.backbone.init_cfg is None
    assert _shapes(written) == _shapes(original)


def test_read_values():
    """What is read is the config's value, not a self-consistent guess."""
    tiny = spec_from_config(_load(f"{SEG}/mask-rcnn_us-r50_fpn_slimmable_tiny.py"))
    assert (tiny.task, tiny.layout, tiny.slimmable, tiny.width, tiny.width_range) == ("mask", "fpn", True, 1.0,
                                                                                     (0.25, 1.0))
    assert (tiny.dataset, tiny.class_names, tiny.num_classes) == ("us3l_shapes", list(CLASS_NAMES), 4)
    assert tiny.anchor_sizes == ((16,), (32,), (64,), (128,), (256,))  # scales=[4] x strides 4..64
    assert (tiny.test_min_size, tiny.test_max_size, tiny.rpn_pre_nms_topk, tiny.rpn_post_nms_topk) == (128, 128, 200,
                                                                                                        100)
    assert (tiny.fpn_norm, tiny.backbone_norm, tiny.input_format) == ("BN", "BN", "RGB")
    c4 = spec_from_config(_load(f"{DET}/faster-rcnn_us-r50_c4_1x_coco.py"))
    assert (c4.task, c4.layout, c4.slimmable, c4.dataset, c4.class_names) == ("faster", "c4", False, "coco", None)
    assert c4.anchor_strides == (16,) and c4.anchor_sizes == ((32, 64, 128, 256, 512),)
    assert c4.box_pooler == Pooler(14, 0, True) and c4.backbone_norm == "SyncBN"
    assert (c4.test_min_size, c4.test_max_size, c4.rpn_pre_nms_topk, c4.rpn_post_nms_topk) == (800, 1333, 6000, 1000)
    assert (c4.rpn_bbox_weights, c4.box_bbox_weights) == ((1.0,) * 4, (10.0, 10.0, 5.0, 5.0))
    assert (c4.score_thresh, c4.nms_thresh, c4.detections_per_image, c4.size_divisibility) == (0.05, 0.5, 100, 32)


# the fields a plain FPN Mask R-CNN on COCO cannot change (its kind, and what only Detectron2 can set)
FIXED = {"task", "layout", "slimmable", "width_range", "slim_neck_heads", "dataset", "stride_in_1x1", "anchor_strides"}


def test_changed_values_carry(tmp_path):
    """Every field that differs from the template lands in its key: the spec read back is the changed one."""
    spec = spec_from_config(_load(MASK_FPN_COCO))
    names = [f"class{i}" for i in range(7)]
    changed = spec.replace(
        depth=18, num_classes=7, class_names=names, width=0.5, fpn_channels=128, fpn_norm="", backbone_norm="GN",
        box_fc_dim=512, mask_conv_dim=128, input_format="BGR", pixel_mean=tuple(reversed(spec.pixel_mean)),
        pixel_std=(1.0, 2.0, 3.0), size_divisibility=64, test_min_size=100, test_max_size=200,
        anchor_sizes=((16,), (32,), (64,), (128,), (256,)), anchor_ratios=(0.25, 1.0, 4.0), anchor_offset=0.5,
        rpn_bbox_weights=(2.0, 2.0, 1.0, 1.0), box_bbox_weights=(20.0, 20.0, 10.0, 10.0),
        box_pooler=Pooler(5, 2, False), mask_pooler=Pooler(12, 1, False), rpn_pre_nms_topk=500,
        rpn_post_nms_topk=300, rpn_nms_thresh=0.6, score_thresh=0.3, nms_thresh=0.4, detections_per_image=50,
        mask_thresh=0.4, resize_backend="pillow" if spec.resize_backend == "cv2" else "cv2")
    unchanged = [f for f in spec.__dataclass_fields__ if getattr(changed, f) == getattr(spec, f)]
    assert set(unchanged) == FIXED  # the test changes every field the writer sets
    cfg = _written(changed, tmp_path)
    assert spec_from_config(cfg) == changed
    m = cfg.model
    assert m.data_preprocessor.bgr_to_rgb is False
    assert m.data_preprocessor.mean == [103.53, 116.28, 123.675] and m.data_preprocessor.pad_size_divisor == 64
    assert m.rpn_head.anchor_generator.scales == [4] and m.rpn_head.anchor_generator.center_offset == 0.5
    assert m.rpn_head.bbox_coder.target_stds == [0.5, 0.5, 1.0, 1.0]
    assert m.roi_head.bbox_head.bbox_coder.target_stds == [0.05, 0.05, 0.1, 0.1]
    assert m.test_cfg.rcnn.score_thr == 0.3 and m.test_cfg.rpn.max_per_img == 300
    assert m.test_cfg.rcnn.mask_thr_binary == 0.4 and m.test_cfg.rpn.nms.iou_threshold == 0.6
    for loader in (cfg.val_dataloader, cfg.test_dataloader):
        resize = [s for s in loader.dataset.pipeline if s.type == "Resize"]
        assert [tuple(r.scale) for r in resize] == [(200, 100)] and resize[0].keep_ratio is True
        assert resize[0].backend == changed.resize_backend
    assert m.roi_head.bbox_head.num_classes == 7 and m.roi_head.mask_head.num_classes == 7
    for loader in (cfg.train_dataloader, cfg.val_dataloader, cfg.test_dataloader):
        assert list(loader.dataset.metainfo.classes) == names
    assert m.backbone.width_mult == 0.5 and m.neck.in_channels == [32, 64, 128, 256]  # R18 at 0.5
    assert m.backbone.norm_cfg == dict(type="GN", num_groups=32, requires_grad=True)
    assert m.neck.out_channels == 128 and m.neck.norm_cfg is None  # the spec's own FPN width and norm
    assert dict(m.roi_head.bbox_roi_extractor.roi_layer) == dict(type="RoIAlign", output_size=5, sampling_ratio=2,
                                                                 aligned=False)
    assert m.roi_head.bbox_head.roi_feat_size == 5
    assert cfg.test_evaluator.prefix == "w0.50"
    shapes = _shapes(cfg)
    assert shapes["roi_head.bbox_head.fc_cls.weight"] == (8, 512)
    assert shapes["roi_head.bbox_head.shared_fcs.0.weight"] == (512, 128 * 5 * 5)
    assert shapes["neck.lateral_convs.0.conv.weight"] == (128, 32, 1, 1)
    assert shapes["rpn_head.rpn_conv.weight"] == (128, 128, 3, 3)
    assert shapes["roi_head.mask_head.conv_logits.weight"] == (7, 128, 1, 1)


def test_slimmable_values_carry(tmp_path):
    spec = spec_from_config(_load(f"{DET}/faster-rcnn_us-r50_fpn_slimmable_1x.py"))
    changed = spec.replace(width_range=(0.5, 1.0), slim_neck_heads=False, fpn_channels=128, box_fc_dim=512,
                           backbone_norm="BN", fpn_norm="", num_classes=3, class_names=["a", "b", "c"])
    cfg = _written(changed, tmp_path)
    assert spec_from_config(cfg) == changed
    assert tuple(cfg.model.width_range) == (0.5, 1.0) and cfg.model.slim_neck_and_heads is False
    assert cfg.model.neck.in_channels == [256, 512, 1024, 2048]  # a slimmable FPN takes the full-width trunk
    shapes = _shapes(cfg)
    assert shapes["neck.lateral_convs.3.conv.weight"] == (128, 2048, 1, 1)
    assert shapes["roi_head.bbox_head.fc_cls.weight"] == (4, 512)


def test_c4_plain_width_carries(tmp_path):
    """C4 at a width: RPN, box RoI extractor and heads follow res4 / res5 of the width-sized trunk."""
    spec = spec_from_config(_load(f"{SEG}/mask-rcnn_us-r50_c4_1x_coco_tiny.py")).replace(width=0.5,
                                                                                        backbone_norm="FrozenBN")
    cfg = _written(spec, tmp_path)
    m = cfg.model
    for part in (m.backbone, m.roi_head.shared_head):  # Detectron2's FrozenBN: BN frozen, statistics kept
        assert part.norm_cfg == dict(type="BN", requires_grad=False) and part.norm_eval is True
    assert (m.rpn_head.in_channels, m.rpn_head.feat_channels, m.roi_head.bbox_roi_extractor.out_channels) == (512,
                                                                                                              512, 512)
    assert (m.roi_head.bbox_head.in_channels, m.roi_head.mask_head.in_channels) == (1024, 1024)
    assert m.roi_head.shared_head.width_mult == 0.5 and m.roi_head.shared_head.init_cfg is None
    assert spec_from_config(cfg) == spec
    assert _shapes(cfg)["roi_head.shared_head.layer4.0.conv1.weight"] == (256, 512, 1, 1)


def test_exported_plain_config_reads(tmp_path):
    """The plain detector tools/export_detector.py writes (one width of a slimmable one, neck and heads slimmed)
    reads with the counts at its width, and is written back as the same detector."""
    from us3l.mmdet.export import plain_config

    exported = plain_config(_load(f"{SEG}/mask-rcnn_us-r50_fpn_slimmable_tiny.py"), 0.5)
    spec = spec_from_config(exported)
    assert (spec.slimmable, spec.width, spec.fpn_channels, spec.box_fc_dim, spec.mask_conv_dim) == (False, 0.5, 128,
                                                                                                     512, 128)
    written = _written(spec, tmp_path)
    assert spec_from_config(written) == spec
    assert _shapes(written) == _shapes(exported)


REFUSED = [
    ("rpn_head.anchor_generator", dict(type="AnchorGenerator", octave_base_scale=4, scales_per_octave=3,
                                       ratios=[0.5, 1.0, 2.0], strides=[4, 8, 16, 32, 64]),
     "model.rpn_head.anchor_generator.octave_base_scale"),
    ("roi_head.bbox_head.reg_class_agnostic", True, "model.roi_head.bbox_head.reg_class_agnostic"),
    ("roi_head.bbox_roi_extractor.roi_layer", dict(type="RoIPool", output_size=7),
     "model.roi_head.bbox_roi_extractor.roi_layer.type"),
    ("rpn_head.bbox_coder.target_means", [0.1, 0.0, 0.0, 0.0], "model.rpn_head.bbox_coder.target_means"),
    ("roi_head.bbox_head.bbox_coder.target_means", [0.0, 0.0, 0.5, 0.0],
     "model.roi_head.bbox_head.bbox_coder.target_means"),
    ("neck.add_extra_convs", "on_input", "model.neck.add_extra_convs"),
    ("neck.num_outs", 6, "model.neck.num_outs"),
    ("neck.start_level", 1, "model.neck.start_level"),
    ("rpn_head.anchor_generator.base_sizes", [8, 16, 32, 64, 128], "model.rpn_head.anchor_generator.base_sizes"),
    ("rpn_head.bbox_coder.type", "LegacyDeltaXYWHBBoxCoder", "model.rpn_head.bbox_coder.type"),
    ("roi_head.bbox_head.bbox_coder.clip_border", False, "model.roi_head.bbox_head.bbox_coder.clip_border"),
    ("roi_head.bbox_head.type", "Shared4Conv1FCBBoxHead", "model.roi_head.bbox_head.type"),
    ("roi_head.mask_roi_extractor.finest_scale", 112, "model.roi_head.mask_roi_extractor.finest_scale"),
    ("roi_head.mask_head.num_classes", 5, "model.roi_head.mask_head.num_classes"),
    ("roi_head.mask_head.class_agnostic", True, "model.roi_head.mask_head.class_agnostic"),
    ("neck.in_channels", [256, 512, 1024, 1024], "model.neck.in_channels"),
    ("rpn_head.feat_channels", 512, "model.rpn_head.feat_channels"),
    ("test_cfg.rpn.min_bbox_size", 2, "model.test_cfg.rpn.min_bbox_size"),
    ("test_cfg.rcnn.nms", dict(type="soft_nms", iou_threshold=0.5), "model.test_cfg.rcnn.nms.type"),
    ("data_preprocessor.pad_value", 114, "model.data_preprocessor.pad_value"),
    ("type", "CascadeRCNN", "model.type"),
]


@pytest.mark.parametrize("path,value,key", REFUSED, ids=[k for _, _, k in REFUSED])
def test_refused_config_options(path, value, key):
    cfg = _load(MASK_FPN_TINY)
    node = cfg.model
    *parents, last = path.split(".")
    for p in parents:
        node = node[p]
    node[last] = value
    with pytest.raises(SpecError, match=key.replace(".", r"\.")):
        spec_from_config(cfg)


def test_refused_test_pipeline():
    cfg = _load(MASK_FPN_TINY)
    resize = next(s for s in cfg.test_dataloader.dataset.pipeline if s.type == "Resize")
    resize.keep_ratio = False
    with pytest.raises(SpecError, match=r"test_dataloader\.dataset\.pipeline\[1\]\.keep_ratio"):
        spec_from_config(cfg)
    cfg = _load(MASK_FPN_TINY)
    cfg.test_dataloader.dataset.pipeline.insert(2, dict(type="Pad", size_divisor=64))
    with pytest.raises(SpecError, match=r"test_dataloader\.dataset\.pipeline\[2\]\.type"):
        spec_from_config(cfg)


def test_unexpressible_specs_refused():
    spec = spec_from_config(_load(MASK_FPN_COCO))
    with pytest.raises(SpecError, match="same scales on every level"):
        config_from_spec(spec.replace(anchor_sizes=((32,), (64,), (100,), (256,), (512,))))
    c4 = spec_from_config(_load(f"{SEG}/mask-rcnn_us-r50_c4_1x_coco.py"))
    with pytest.raises(SpecError, match="slimmable C4"):
        config_from_spec(c4.replace(slimmable=True))
    with pytest.raises(SpecError, match="stride_in_1x1"):
        config_from_spec(spec.replace(stride_in_1x1=True))
    with pytest.raises(SpecError, match="anchor strides"):
        config_from_spec(spec.replace(anchor_strides=(8, 16, 32, 64, 128)))
    with pytest.raises(SpecError, match="us3l_shapes"):
        config_from_spec(spec.replace(dataset="us3l_shapes"))  # 80 classes on the 4-class set
    slim = spec_from_config(_load(f"{SEG}/mask-rcnn_us-r50_fpn_slimmable_1x.py"))
    # a slimmable detector's evaluation width is a runtime choice (set_width), not written
    assert spec_from_config(config_from_spec(slim.replace(width=0.5))).width == slim.width_range[1]
    with pytest.raises(SpecError, match="backbone_norm 'GN'"):
        config_from_spec(slim.replace(backbone_norm="GN"))
