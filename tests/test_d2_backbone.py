"""Detectron2 backbones at a width: channel counts, norms, FREEZE_AT, C4 res5 head, config errors (real d2)."""
import os
import subprocess
import sys

import detectron2  # noqa: E402,F401
import pytest
import torch
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec  # noqa: E402
from detectron2.modeling import build_backbone, build_model  # noqa: E402

import us3l
from us3l import active_channels  # noqa: E402
from us3l.d2 import US3LResNet, find_us3l_resnet, load_config  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DET = os.path.join(ROOT, "projects", "detection", "configs")
SEG = os.path.join(ROOT, "projects", "segmentation", "configs")
R18 = ["MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64]


def cfg_for(name, *opts, folder=DET):
    return load_config(os.path.join(folder, name), list(opts))


@pytest.mark.parametrize("width", [0.25, 0.35, 0.5, 1.0])
def test_r50_fpn_channels_follow_width(width):
    cfg = cfg_for("faster_rcnn_US-R50_FPN_1x_cpu.yaml", "MODEL.US3L.WIDTH_MULT", width)
    fpn = build_backbone(cfg, ShapeSpec(channels=3))
    trunk = fpn.bottom_up
    assert isinstance(trunk, US3LResNet) and trunk.us3l_width == width
    expected = {f"res{s}": active_channels(256 * 2 ** (s - 2), width) for s in range(2, 6)}
    assert {k: v.channels for k, v in trunk.output_shape().items()} == expected
    assert trunk.stem.conv1.weight.shape[0] == active_channels(64, width)
    assert trunk.res3[0].conv2.weight.shape[:2] == (active_channels(128, width),) * 2  # bottleneck planes
    # FPN lateral convs are built for the width's channels; its outputs keep FPN.OUT_CHANNELS
    assert fpn.fpn_lateral5.weight.shape[1] == expected["res5"]
    assert all(s.channels == cfg.MODEL.FPN.OUT_CHANNELS for s in fpn.output_shape().values())
    if width == 0.35:  # a non-round width: the counts are the slimmable model's, not a naive round
        assert list(expected.values()) == [88, 176, 360, 720]


def test_r18_forward_matches_output_shape():
    cfg = cfg_for("faster_rcnn_US-R50_FPN_1x_cpu.yaml", *R18, "MODEL.US3L.WIDTH_MULT", 0.35)
    fpn = build_backbone(cfg, ShapeSpec(channels=3))
    shapes = fpn.bottom_up.output_shape()
    assert [s.channels for s in shapes.values()] == [active_channels(c, 0.35) for c in (64, 128, 256, 512)]
    with torch.no_grad():
        feats = fpn.bottom_up(torch.rand(1, 3, 64, 64))
    for name, spec in shapes.items():
        assert feats[name].shape[1] == spec.channels and feats[name].shape[-1] == 64 // spec.stride


def test_c4_res5_lives_in_roi_heads_at_width():
    cfg = cfg_for("mask_rcnn_US-R50_C4_1x_cpu.yaml", "MODEL.US3L.WIDTH_MULT", 0.35, folder=SEG)
    model = build_model(cfg)
    assert not hasattr(model.backbone, "res5")
    assert model.backbone.output_shape()["res4"].channels == active_channels(1024, 0.35)
    res5 = model.roi_heads.res5
    assert res5[0].conv1.weight.shape == (active_channels(512, 0.35), active_channels(1024, 0.35), 1, 1)
    assert res5[-1].out_channels == active_channels(2048, 0.35)
    assert model.roi_heads.box_predictor.cls_score.in_features == active_channels(2048, 0.35)
    assert model.roi_heads.mask_head.deconv.weight.shape[0] == active_channels(2048, 0.35)  # C4: no mask convs


def test_norms_and_freeze_behave_as_detectron2():
    frozen = build_backbone(cfg_for("faster_rcnn_US-R50_FPN_1x_cpu.yaml", *R18, "MODEL.RESNETS.NORM", "FrozenBN",
                                    "MODEL.BACKBONE.FREEZE_AT", 2, "MODEL.US3L.WIDTH_MULT", 0.5),
                            ShapeSpec(channels=3)).bottom_up
    assert isinstance(frozen.stem.conv1.norm, FrozenBatchNorm2d)
    assert not any(p.requires_grad for p in frozen.stem.parameters())
    assert not any(p.requires_grad for p in frozen.res2.parameters())
    assert all(p.requires_grad for p in frozen.res3.parameters())  # FrozenBN has no parameters: only convs

    sync = build_backbone(cfg_for("faster_rcnn_US-R50_FPN_1x.yaml", *R18, "MODEL.US3L.WIDTH_MULT", 0.5),
                          ShapeSpec(channels=3))
    assert isinstance(sync.bottom_up.res4[0].conv1.norm, torch.nn.SyncBatchNorm)
    assert isinstance(sync.fpn_lateral4.norm, torch.nn.SyncBatchNorm)

    gn = build_backbone(cfg_for("faster_rcnn_US-R50_FPN_1x_cpu.yaml", *R18, "MODEL.RESNETS.NORM", "GN",
                                "MODEL.US3L.WIDTH_MULT", 0.5), ShapeSpec(channels=3)).bottom_up
    assert isinstance(gn.res2[0].conv1.norm, torch.nn.GroupNorm) and gn.res2[0].conv1.norm.num_channels == 32


def test_gn_at_a_width_with_indivisible_channels_is_a_clear_error():
    cfg = cfg_for("faster_rcnn_US-R50_FPN_1x_cpu.yaml", "MODEL.RESNETS.NORM", "GN", "MODEL.US3L.WIDTH_MULT", 0.35)
    with pytest.raises(ValueError, match=r"GN.*width 0\.35.*not divisible by 32"):
        build_backbone(cfg, ShapeSpec(channels=3))


@pytest.mark.parametrize("width", [0.2, 1.5, "abc"])
def test_width_outside_range_is_rejected_at_build(width):
    cfg = cfg_for("faster_rcnn_US-R50_FPN_1x_cpu.yaml", *R18)
    cfg.MODEL.US3L.WIDTH_MULT = width
    with pytest.raises(ValueError, match="WIDTH_MULT"):
        build_backbone(cfg, ShapeSpec(channels=3))


def test_unsupported_resnet_variants_are_rejected():
    for opts, msg in (([ "MODEL.RESNETS.NUM_GROUPS", 32], "ResNeXt"), (["MODEL.RESNETS.DEPTH", 152], "depths")):
        with pytest.raises(ValueError, match=msg):
            build_backbone(cfg_for("faster_rcnn_US-R50_FPN_1x_cpu.yaml", *opts), ShapeSpec(channels=3))


def test_every_config_builds_at_a_width():
    for folder in (DET, SEG):
        for name in sorted(os.listdir(folder)):
            if name.startswith("Base-"):
                continue
            cfg = cfg_for(name, *R18, "MODEL.US3L.WIDTH_MULT", 0.5, folder=folder)
            assert cfg.MODEL.DEVICE == ("cuda" if name.endswith("_1x.yaml") else "cpu"), name
            cfg.MODEL.DEVICE = "cpu"
            model = build_model(cfg)
            if "slimmable" in name:  # ONE detector for every width, built at WIDTH_MULT (us3l.d2.slimmable_backbone)
                assert us3l.get_width(model) == 0.5, name
                assert cfg.MODEL.MASK_ON == (folder == SEG), name
                continue
            assert find_us3l_resnet(model).us3l_width == 0.5, name
            assert cfg.MODEL.MASK_ON == (folder == SEG), name
            assert cfg.INPUT.FORMAT == "RGB" and not cfg.MODEL.RESNETS.STRIDE_IN_1X1, name
            assert cfg.MODEL.BACKBONE.FREEZE_AT == 0 and cfg.TEST.PRECISE_BN.ENABLED, name
            assert (cfg.MODEL.RESNETS.NORM == "SyncBN") == name.endswith("_1x.yaml"), name


def test_import_us3l_does_not_import_detectron2():
    code = "import sys, us3l, us3l.checkpoint, us3l.models; assert 'detectron2' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_width_tags_name_metrics_without_collisions():
    from us3l.d2 import width_tag

    assert [width_tag(w) for w in (1.0, 0.5, 0.35, 0.375, 0.25)] == ["w1.00", "w0.50", "w0.35", "w0.375", "w0.25"]
