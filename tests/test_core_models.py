"""Slimmable backbones: torchvision compatibility at 1.0, and a width that really changes outputs and cost."""
import pytest
import torch
import torchvision
from fvcore.nn import FlopCountAnalysis

import us3l
from us3l.checkpoint import CheckpointError
from us3l.checkpoint.model_io import load_state_dict_checked
from us3l.models import build_static_model, us_mobilenet_v2, us_resnet18, us_resnet50


def _randomize_bn(model):
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


@torch.no_grad()
def test_us_resnet50_matches_torchvision_at_full_width():
    tv = torchvision.models.resnet50()
    _randomize_bn(tv)
    model = us_resnet50()
    model.load_state_dict(tv.state_dict(), strict=True)
    x = torch.randn(2, 3, 96, 96)
    assert (model.eval()(x) - tv.eval()(x)).abs().max() <= 1e-5


@torch.no_grad()
def test_mobilenet_v2_matches_torchvision_at_full_width():
    tv = torchvision.models.mobilenet_v2()
    _randomize_bn(tv)
    model = us_mobilenet_v2()
    model.load_state_dict(tv.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    assert (model.eval()(x) - tv.eval()(x)).abs().max() <= 1e-5


@torch.no_grad()
@pytest.mark.parametrize("factory,size", [(us_resnet50, 64), (us_mobilenet_v2, 64)])
def test_width_changes_output_features_and_flops(factory, size):
    model = factory(num_classes=0).train()
    x = torch.randn(2, 3, size, size)
    feats, flops = {}, {}
    for w in (1.0, 0.5, 0.25):
        us3l.set_width(model, w)
        feats[w] = model(x)
        flops[w] = FlopCountAnalysis(model, x).unsupported_ops_warnings(False).uncalled_modules_warnings(False).total()
    if factory is us_resnet50:
        assert [feats[w].shape[1] for w in (1.0, 0.5, 0.25)] == [2048, 1024, 512]
    # roughly quadratic in width; MobileNetV2 less so: its hidden channels stay multiples of 8 * expansion ratio
    # (the reference's rounding) and its 1280-d head conv keeps its full output
    k = 3 if factory is us_resnet50 else 2.5
    assert flops[1.0] > k * flops[0.5] > k * 3 * flops[0.25] / 1.5
    assert not torch.allclose(feats[0.5][:, :8], feats[1.0][:, :8])


@torch.no_grad()
def test_cifar_stem_variant():
    model = us_resnet18(num_classes=100, cifar_stem=True)
    assert model.conv1.weight.shape[-1] == 3 and isinstance(model.maxpool, torch.nn.Identity)
    assert model.train()(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    assert model.forward_stages(torch.randn(2, 3, 32, 32))[-1].shape[-1] == 4


def test_state_dict_of_other_width_or_arch_is_refused_without_corruption():
    model = us_resnet18(num_classes=10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    narrow = build_static_model("resnet18", 0.5, num_classes=10).state_dict()
    with pytest.raises(CheckpointError, match="mismatched|shape-mismatched"):
        load_state_dict_checked(model, narrow)
    other = us_resnet50(num_classes=10).state_dict()
    with pytest.raises(CheckpointError, match="unexpected"):
        load_state_dict_checked(model, other)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
