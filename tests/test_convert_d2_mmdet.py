"""Detectron2 <-> MMDetection with both real frameworks: same features after conversion, whole detectors,
anchor order, bit-identical round trip."""
import os
import pickle

import detectron2  # noqa: E402,F401
import mmcv.ops  # noqa: E402,F401
import mmdet  # noqa: E402,F401
import pytest
import torch
import torch.nn as nn
from ckpt_helpers import ROOT, us_r50_checkpoint  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.layers import ShapeSpec  # noqa: E402
from mmdet.registry import MODELS  # noqa: E402
from mmdet.utils import register_all_modules  # noqa: E402

import us3l.d2  # noqa: E402,F401
import us3l.mmdet  # noqa: E402,F401
from us3l.checkpoint.d2_format import convert_backbone_to_d2  # noqa: E402
from us3l.checkpoint.frameworks import convert_d2_to_mmdet, convert_mmdet_to_d2, d2_to_mmdet_state, mmdet_to_d2_state  # noqa: E402  # noqa: E402
from us3l.checkpoint.keymaps import permute_anchors  # noqa: E402
from us3l.d2 import US3LCheckpointer, add_us3l_config, build_us3l_resnet_fpn_backbone  # noqa: E402

register_all_modules()
D2_CFG = {"fpn": "projects/segmentation/configs/mask_rcnn_US-R50_FPN_1x_cpu.yaml",
          "c4": "projects/segmentation/configs/mask_rcnn_US-R50_C4_1x_cpu.yaml"}
MM_CFG = {"fpn": "projects/segmentation/mmdet_configs/mask-rcnn_us-r50_fpn_1x_coco_cpu.py",
          "c4": "projects/segmentation/mmdet_configs/mask-rcnn_us-r50_c4_1x_coco_cpu.py"}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Our checkpoint -> Detectron2 .pkl (the Detectron2 plugin's converter) -> MMDetection .pth (ours)."""
    d = tmp_path_factory.mktemp("d2mm")
    convert_backbone_to_d2(us_r50_checkpoint()[0], str(d / "us_r50.pkl"))
    convert_d2_to_mmdet(str(d / "us_r50.pkl"), str(d / "us_r50_mmdet.pth"))
    return d


def d2_cfg(layout: str, width: float, num_classes: int = 4):
    cfg = get_cfg()
    add_us3l_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, D2_CFG[layout]))
    cfg.MODEL.US3L.WIDTH_MULT = width
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    cfg.MODEL.WEIGHTS = ""
    return cfg


def mm_model(layout: str, width: float, num_classes: int = 4):
    from mmengine.config import Config

    cfg = Config.fromfile(os.path.join(ROOT, MM_CFG[layout]))
    cfg.model.backbone.init_cfg = None
    if layout == "c4":
        cfg.model.roi_head.shared_head.init_cfg = None
    cfg.model.roi_head.bbox_head.num_classes = num_classes
    cfg.model.roi_head.mask_head.num_classes = num_classes
    us3l.mmdet.apply_width(cfg, width)
    return MODELS.build(cfg.model)


class _Holder(nn.Module):
    """Gives a bare backbone the ``backbone.`` prefix it has inside a Detectron2 detector."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone


@pytest.mark.parametrize("width", [0.25, 0.5, 1.0])
def test_backbone_fpn_features_match_after_conversion(files, width):
    cfg = d2_cfg("fpn", width)
    d2 = _Holder(build_us3l_resnet_fpn_backbone(cfg, ShapeSpec(channels=3)))
    US3LCheckpointer(d2, cfg=cfg).load(str(files / "us_r50.pkl"))  # the Detectron2 plugin's own loader
    torch.manual_seed(1)
    with torch.no_grad():  # non-trivial FPN BN so that a misplaced level shows
        for name, m in d2.backbone.named_modules():
            if name.startswith("fpn_") and isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2), m.weight.uniform_(0.5, 1.5)
    mm_state, conv = d2_to_mmdet_state(d2.state_dict())
    assert conv.layout == "fpn"
    # MMDetection: trunk from the converted FILE through init_cfg (our loader), FPN from the converted model
    bb = MODELS.build(dict(type="US3LResNet", depth=50, width_mult=width, norm_cfg=dict(type="BN"),
                           init_cfg=dict(type="Pretrained", checkpoint=str(files / "us_r50_mmdet.pth"),
                                         prefix="backbone.")))
    bb.init_weights()
    neck = MODELS.build(dict(type="FPN", in_channels=list(bb.out_channels), out_channels=256, num_outs=5,
                             norm_cfg=dict(type="BN")))
    neck.load_state_dict({k[len("neck."):]: v for k, v in mm_state.items() if k.startswith("neck.")}, strict=True)
    for k, v in bb.state_dict().items():  # file route == model route, tensor for tensor
        assert torch.equal(v, mm_state["backbone." + k]), k
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        d2.eval(), bb.eval(), neck.eval()
        ref = d2.backbone(x)
        outs = neck(bb(x))
    assert len(outs) == 5
    for name, out in zip(["p2", "p3", "p4", "p5", "p6"], outs):
        assert out.shape == ref[name].shape
        assert (out - ref[name]).abs().max().item() <= 1e-5, name


@pytest.mark.parametrize("layout", ["fpn", "c4"])
def test_whole_mask_rcnn_converts_into_the_other_framework(layout):
    from detectron2.modeling import build_model

    width = 0.5
    torch.manual_seed(0)
    d2 = build_model(d2_cfg(layout, width))
    d2_state = d2.state_dict()
    mm_state, conv = d2_to_mmdet_state(d2_state)
    assert conv.layout == layout and not conv.skipped
    mm = mm_model(layout, width)
    own = mm.state_dict()
    assert set(mm_state) == set(own)  # every tensor of both detectors has its counterpart ...
    for k, v in mm_state.items():
        assert v.shape == own[k].shape, k  # ... of the same shape
    mm.load_state_dict(mm_state, strict=True)
    back, _ = mmdet_to_d2_state(mm.state_dict())
    assert set(back) == set(d2_state)
    assert all(torch.equal(back[k], d2_state[k]) for k in d2_state)


@pytest.mark.parametrize("sizes,ratios,strides,scales", [
    ([[32, 64, 128, 256, 512]], [0.5, 1.0, 2.0], [16], [2, 4, 8, 16, 32]),  # C4: 15 anchors on one level
    ([[32], [64]], [0.5, 1.0, 2.0], [4, 8], [8]),  # FPN: one size per level
])
def test_rpn_anchor_order_is_what_the_converter_assumes(sizes, ratios, strides, scales):
    from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
    from mmdet.models.task_modules.prior_generators import AnchorGenerator

    d2 = DefaultAnchorGenerator(sizes=sizes, aspect_ratios=[ratios], strides=strides, offset=0.0)
    mm = AnchorGenerator(strides=strides, ratios=ratios, scales=scales)
    for d2_cell, mm_base in zip(d2.cell_anchors, mm.base_anchors):
        order = permute_anchors(torch.arange(len(d2_cell)), len(d2_cell) // len(ratios), len(ratios), to="mmdet")
        assert torch.allclose(mm_base, d2_cell[order], atol=1e-3)


def test_round_trip_d2_mmdet_d2_is_bit_identical(files, tmp_path):
    convert_mmdet_to_d2(str(files / "us_r50_mmdet.pth"), str(tmp_path / "back.pkl"))
    with open(files / "us_r50.pkl", "rb") as f:
        orig = pickle.load(f)
    with open(tmp_path / "back.pkl", "rb") as f:
        back = pickle.load(f)
    assert {k: v for k, v in back.items() if k != "model"} == {k: v for k, v in orig.items() if k != "model"}
    assert list(back["model"]) == list(orig["model"])
    assert any(k.endswith("running_mean_w0500") for k in orig["model"])
    for k, a in orig["model"].items():
        b = back["model"][k]
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), k
