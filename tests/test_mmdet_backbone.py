"""The MMDetection backbone / C4 head at one width: names, loading ONE full-width file at any width, errors."""
import mmcv.ops  # noqa: E402,F401
import mmdet  # noqa: E402,F401
import pytest
import torch
from ckpt_helpers import us_r50_checkpoint  # noqa: E402
from mmdet.registry import MODELS  # noqa: E402
from mmdet.utils import register_all_modules  # noqa: E402

import us3l.mmdet  # noqa: E402,F401  (registers the modules)
from us3l import UncalibratedWidthError, export_static  # noqa: E402
from us3l.checkpoint import CheckpointError  # noqa: E402
from us3l.checkpoint.mmdet_format import convert_backbone_to_mmdet  # noqa: E402

register_all_modules()


@pytest.fixture(scope="module")
def mm_file(tmp_path_factory):
    """Our pre-training-side checkpoint converted for MMDetection (one file, every width)."""
    dst = str(tmp_path_factory.mktemp("mm") / "us_r50_mmdet.pth")
    convert_backbone_to_mmdet(us_r50_checkpoint()[0], dst)
    return dst


def _backbone(width, path=None, **kw):
    init = dict(type="Pretrained", checkpoint=path, prefix="backbone.") if path else None
    m = MODELS.build(dict(type="US3LResNet", depth=kw.pop("depth", 50), width_mult=width, init_cfg=init, **kw))
    m.init_weights()
    return m


def test_names_and_shapes_are_mmdet_resnet():
    ours = MODELS.build(dict(type="US3LResNet", depth=50, width_mult=1.0))
    ref = MODELS.build(dict(type="ResNet", depth=50))
    a = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    b = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert a == b
    # same tensors -> same features: the forward pass is mmdet's ResNet (pytorch style)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(1, 3, 64, 64)
    ours.eval(), ref.eval()  # (mmdet's ResNet.train returns None)
    with torch.no_grad():
        for f, g in zip(ours(x), ref(x)):
            assert torch.allclose(f, g, atol=1e-5)


@pytest.mark.parametrize("width", [0.25, 0.5, 1.0])
def test_loads_one_file_at_any_width(mm_file, width):
    _, slimmable = us_r50_checkpoint()
    bb = _backbone(width, mm_file).eval()
    assert bb.out_channels == tuple(t.shape[1] for t in bb(torch.zeros(1, 3, 64, 64)))
    ref = export_static(slimmable, width)  # the slimmable network run at this width
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for f, g in zip(bb(x), ref.forward_stages(x)):
            assert f.shape == g.shape and (f - g).abs().max() <= 1e-5


def test_c4_shared_head_takes_layer4_from_the_same_file(mm_file):
    _, slimmable = us_r50_checkpoint()
    bb = _backbone(0.5, mm_file, num_stages=3, out_indices=(2,)).eval()
    head = MODELS.build(dict(type="US3LResLayer", depth=50, width_mult=0.5,
                             init_cfg=dict(type="Pretrained", checkpoint=mm_file, prefix="backbone.")))
    head.init_weights()
    assert not hasattr(bb, "layer4") and all(k.startswith("layer4.") for k in head.state_dict())
    ref = export_static(slimmable, 0.5)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        c4 = bb(x)[0]
        assert torch.allclose(head.eval()(c4), ref.forward_stages(x)[3], atol=1e-5)


def test_frozen_stages_and_norm_eval():
    bb = MODELS.build(dict(type="US3LResNet", depth=50, width_mult=0.5, frozen_stages=1, norm_eval=True))
    bb.train()
    assert not any(p.requires_grad for p in bb.conv1.parameters()) and not bb.layer1.training
    assert all(p.requires_grad for p in bb.layer2.parameters())
    assert not bb.layer3[0].bn1.training  # norm_eval keeps BN statistics fixed while training
    bb = MODELS.build(dict(type="US3LResNet", depth=50, width_mult=0.5, norm_eval=False))
    assert bb.train().layer3[0].bn1.training


def test_loading_errors(mm_file, tmp_path):
    with pytest.raises(CheckpointError, match="outside the width range"):
        _backbone(0.2, mm_file)
    with pytest.raises(CheckpointError, match="resnet50 backbone but the model is depth=18"):
        _backbone(1.0, mm_file, depth=18)
    with pytest.raises(UncalibratedWidthError, match="calibrated widths"):
        _backbone(0.3, mm_file)
    _backbone(0.3, mm_file, bn_stats="reset", norm_eval=False)  # re-estimated while fine-tuning: allowed
    with pytest.raises(CheckpointError, match="norm_eval=True"):  # BN kept in eval: mean 0 / var 1 for good
        _backbone(0.3, mm_file, bn_stats="reset")
    bad = tmp_path / "corrupt.pth"
    bad.write_bytes(b"garbage" * 10)
    with pytest.raises(CheckpointError, match="corrupt"):
        _backbone(0.5, str(bad))
    with pytest.raises(CheckpointError, match="prefix 'neck.'"):
        MODELS.build(dict(type="US3LResNet", width_mult=0.5, init_cfg=dict(
            type="Pretrained", checkpoint=mm_file, prefix="neck."))).init_weights()
    sd = torch.load(mm_file, weights_only=True)
    del sd["state_dict"]["backbone.layer2.1.conv2.weight"]
    torch.save(sd, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match="missing: layer2.1.conv2.weight"):
        _backbone(0.5, str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="outside"):
        MODELS.build(dict(type="US3LResNet", width_mult=1.5))
