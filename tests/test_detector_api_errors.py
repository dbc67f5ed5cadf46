"""Backbone-level functions handed a detector name the detector call that works (issue 26: ``calibrate_bn`` on a
Detectron2 detector ended in an unrelated IndexError while its error message sent users to it)."""
import os

import pytest
import torch

import us3l
from us3l.models import us_resnet18

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
D2_CFG = os.path.join(ROOT, "projects", "segmentation", "configs", "mask_rcnn_US-R50_FPN_slimmable_tiny.yaml")
MMDET_CFG = os.path.join(ROOT, "projects", "segmentation", "mmdet_configs", "mask-rcnn_us-r50_fpn_slimmable_tiny.py")


def d2_detector():
    from detectron2.modeling import build_model

    from us3l.d2 import load_config

    return build_model(load_config(D2_CFG, ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", "18",
                                            "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"]))


def mmdet_detector():
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    import us3l.mmdet  # noqa: F401

    cfg = Config.fromfile(MMDET_CFG)
    cfg.merge_from_dict({"model.backbone.depth": 18, "model.backbone.init_cfg": None,
                         "model.neck.in_channels": [64, 128, 256, 512]})
    init_default_scope("mmdet")
    return MODELS.build(cfg.model)


@pytest.mark.parametrize("build, framework", [(d2_detector, "d2"), (mmdet_detector, "mmdet")], ids=["d2", "mmdet"])
def test_backbone_functions_name_the_detector_calls(build, framework):
    model = build()
    images = [torch.randn(2, 3, 64, 64)]
    with pytest.raises(TypeError, match=rf"us3l\.calibrate_bn takes a backbone.*us3l\.{framework}\.calibrate_widths"):
        us3l.calibrate_bn(model, images, 0.5)
    export = "export_plain_detector" if framework == "d2" else "export_detector"
    with pytest.raises(TypeError, match=rf"us3l\.export_static takes a backbone.*us3l\.{framework}\.{export}"):
        us3l.export_static(model, 0.5)


def test_an_uncalibrated_backbone_width_names_both_calibrations():
    model = us_resnet18(num_classes=0).eval()
    us3l.set_width(model, 0.5)
    with pytest.raises(us3l.UncalibratedWidthError) as e:
        model(torch.randn(1, 3, 32, 32))
    assert "us3l.calibrate_bn(model, loader, 0.5)" in str(e.value) and "us3l.d2.calibrate_widths" in str(e.value)


def test_mmdet_slimmable_depth_18_without_the_neck_names_the_neck_channels():
    """``model.backbone.depth=18`` alone (the documented way to pick the depth) used to fail in the first forward
    pass with "USConv2d at width 1.0 expects 256 input channels, got 64"."""
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    import us3l.mmdet  # noqa: F401

    cfg = Config.fromfile(MMDET_CFG)
    cfg.merge_from_dict({"model.backbone.depth": 18, "model.backbone.init_cfg": None})
    init_default_scope("mmdet")
    with pytest.raises(ValueError, match=r"model\.neck\.in_channels=\[256, 512, 1024, 2048\] but the backbone "
                                         r"\(depth 18\) gives \[64, 128, 256, 512\] at full width: set "
                                         r"model\.neck\.in_channels=\[64, 128, 256, 512\]"):
        MODELS.build(cfg.model)
