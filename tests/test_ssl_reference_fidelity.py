"""Pre-training matches the US3L reference code where docs/fidelity.md says "same".

Expected values are transcribed from reading the reference (its builder classes, losses and configs), written
here as arithmetic and data, never computed by calling the code under test.
"""
import math
import os

import pytest
import torch
import torch.nn as nn
import torchvision.transforms as T

from us3l import set_width
from us3l.data.transforms import ssl_transform
from us3l.engine.config import ConfigError, config_from_dict, load_config
from us3l.models import build_static_model, build_us_model
from us3l.ops import USBatchNorm2d, USConv2d
from us3l.ssl.losses import cross_view_nt_xent
from us3l.ssl.methods import build_method

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = {"proj_hidden": 64, "proj_dim": 32, "pred_hidden": 48}


def cifar_method(**method):
    """The CIFAR config's method with small heads (ImageNet stem, to keep the test fast)."""
    cfg = load_config(os.path.join(ROOT, "configs", "us3l_cifar100_r18.yaml"),
                      ["model.cifar_stem=false"] + [f"method.{k}={v}" for k, v in {**SMALL, **method}.items()])
    torch.manual_seed(0)
    return cfg, build_method(cfg)


# -- base loss -----------------------------------------------------------------------------------------------
def reference_nt_xent(f1, f2, t):
    """The reference's InfoNCEv2 ``nt_xentv2`` written out sample by sample: rows are [f1; f2], each row's
    candidates are the other 2B-1 rows, its positive the same sample in the other half."""
    f1 = [v / v.norm() for v in f1]
    f2 = [v / v.norm() for v in f2]
    x = f1 + f2
    b = len(f1)
    total = 0.0
    for i in range(2 * b):
        pos = (i + b) % (2 * b)
        denom = sum(math.exp(float(x[i] @ x[j]) / t) for j in range(2 * b) if j != i)
        total += -math.log(math.exp(float(x[i] @ x[pos]) / t) / denom)
    return total / (2 * b)


def test_simclr_momentum_loss_is_the_references_nt_xent():
    g = torch.Generator().manual_seed(0)
    s1, s2, t1, t2 = (torch.randn(5, 8, generator=g) for _ in range(4))
    want = 0.5 * (reference_nt_xent(s1, t2, 0.5) + reference_nt_xent(s2, t1, 0.5))  # student v vs teacher v'
    got = cross_view_nt_xent(s1, s2, t1, t2, 0.5)
    assert float(got) == pytest.approx(want, rel=1e-5)
    # negatives come from the teacher half as well: moving one teacher vector that is a negative changes the loss
    t2b = t2.clone()
    t2b[3] += 5.0
    assert float(cross_view_nt_xent(s1, s2, t1, t2b, 0.5)) != pytest.approx(float(got), rel=1e-6)


def test_cifar_config_is_the_references_simclr_momentum_recipe():
    cfg, m = cifar_method()
    assert (cfg.method.base_loss, cfg.method.temperature, cfg.method.ema_momentum) == ("simclr_momentum", 0.5, 0.99)
    assert m.online.predictor is None and m.online.aux_head is not None  # no predictor on the max branch
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(4, 3, 16, 16, generator=g), torch.randn(4, 3, 16, 16, generator=g))
    ctx = m.begin_iteration(0, 10)
    loss, _ = m.width_loss(x, ctx)
    with torch.no_grad():  # the max branch's loss is NT-Xent of the projections against the EMA teacher's
        z1, _ = m.online.encode(x[0])
        z2, _ = m.online.encode(x[1])
    want = 0.5 * (reference_nt_xent(z1, ctx["t2"], 0.5) + reference_nt_xent(z2, ctx["t1"], 0.5))
    assert float(loss.detach()) == pytest.approx(want, rel=1e-4)
    loss.backward()
    assert all(p.grad is None for p in m.online.aux_head.parameters())
    assert all(p.grad is None for p in m.teacher.parameters())
    # sub-networks distil through the auxiliary head (the reference's "predictor") with a cross-view cosine
    m.online.zero_grad(set_to_none=True)
    set_width(m.online, 0.25)
    loss, _ = m.width_loss(x, ctx)
    with torch.no_grad():
        a1 = m.online.aux_head(m.online.encode(x[0])[0])
        a2 = m.online.aux_head(m.online.encode(x[1])[0])
    cos = nn.functional.cosine_similarity
    want = -0.5 * (cos(a1, ctx["t2"]).mean() + cos(a2, ctx["t1"]).mean())
    assert float(loss.detach()) == pytest.approx(float(want), rel=1e-5)


# -- heads -----------------------------------------------------------------------------------------------------
def reference_projector(feat, hidden, dim, hidden_bias):
    """``encoder_q.fc`` of the reference's SSL classes: the backbone's classifier Linear(feat, hidden) (with
    bias), BN1d, ReLU, Linear(hidden, hidden) (bias only in the SimCLR classes), BN1d, ReLU, Linear(hidden, dim)."""
    bn = {"weight": (hidden,), "bias": (hidden,), "running_mean": (hidden,), "running_var": (hidden,),
          "num_batches_tracked": ()}
    out = {"0.weight": (hidden, feat), "0.bias": (hidden,), "3.weight": (hidden, hidden),
           "6.weight": (dim, hidden), "6.bias": (dim,)}
    out.update({f"1.{k}": v for k, v in bn.items()})
    out.update({f"4.{k}": v for k, v in bn.items()})
    if hidden_bias:
        out["3.bias"] = (hidden,)
    return out


def reference_predictor(dim, hidden):
    return {"0.weight": (hidden, dim), "1.weight": (hidden,), "1.bias": (hidden,), "1.running_mean": (hidden,),
            "1.running_var": (hidden,), "1.num_batches_tracked": (), "3.weight": (dim, hidden), "3.bias": (dim,)}


@pytest.mark.parametrize("base,hidden_bias", [("simclr_momentum", True), ("byol", False)])
def test_heads_have_the_references_layout(base, hidden_bias):
    _, m = cifar_method(base_loss=base)
    proj = {k: tuple(v.shape) for k, v in m.online.projector.state_dict().items()}
    assert proj == reference_projector(512, 64, 32, hidden_bias)
    assert [type(layer).__name__ for layer in m.online.projector] == [
        "USLinear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear"]  # three linear, BN after two
    head = m.online.aux_head
    assert {k: tuple(v.shape) for k, v in head.state_dict().items()} == reference_predictor(32, 48)


# -- group regularization ----------------------------------------------------------------------------------------
def test_group_reg_covers_the_references_parameter_sets():
    _, m = cifar_method(base_loss="byol", feature_distill_weight=1.0, feature_distill_stages=[4])
    def ids(ps):
        return {id(p) for p in ps}

    online = m.online
    core = ids(online.backbone.parameters()) | ids(online.projector.parameters())
    heads = ids(online.predictor.parameters()) | ids(online.aux_head.parameters())
    assert ids(m.reg_parameters(is_max=True)) == core  # prediction heads skipped at width 1.0
    assert ids(m.reg_parameters(is_max=False)) == core | heads  # predictor AND auxiliary head at sub-widths
    assert not ids(online.adapters.parameters()) & ids(m.reg_parameters(is_max=False))  # never the adapters


# -- augmentation ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("recipe", ["cifar", "imagenet"])
def test_crop_scale_is_the_references(recipe):
    crop = [t for t in ssl_transform(recipe, 32).transforms if isinstance(t, T.RandomResizedCrop)]
    assert len(crop) == 1 and tuple(crop[0].scale) == (0.2, 1.0)
    blur = [t for t in ssl_transform(recipe, 32).transforms
            if isinstance(t, T.RandomApply) and isinstance(t.transforms[0], T.GaussianBlur)]
    assert len(blur) == (1 if recipe == "imagenet" else 0)
    if blur:
        assert blur[0].p == 0.5 and tuple(blur[0].transforms[0].sigma) == (0.1, 2.0)


# -- width range -----------------------------------------------------------------------------------------------
def test_width_range_reaches_the_heads():
    cfg = load_config(os.path.join(ROOT, "configs", "us3l_cifar100_r18.yaml"),
                      ["model.cifar_stem=false", "model.width_range=[0.1, 1.0]", "method.base_loss=byol",
                       "method.feature_distill_weight=1.0", "method.feature_distill_stages=[3, 4]"]
                      + [f"method.{k}={v}" for k, v in SMALL.items()])
    m = build_method(cfg)
    slimmable = [mod for mod in m.modules() if hasattr(mod, "width_range")]
    assert slimmable and all(mod.width_range == (0.1, 1.0) for mod in slimmable)
    x = (torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16))
    ctx = m.begin_iteration(0, 10)
    for w in (1.0, 0.1):
        set_width(m.online, w)
        loss, _ = m.width_loss(x, ctx)
        assert torch.isfinite(loss)
    assert m.online.projector[0].active_in_out()[0] == 48  # 512 * 0.1 = 51.2 -> nearest multiple of 8


# -- head combinations -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides,match", [
    (["method.base_loss=byol", "method.predictor=false"], "cannot train without a predictor"),
    (["method.name=simsiam_naive", "method.predictor=false"], "cannot train without a predictor"),
    (["method.predictor=true"], "no predictor on the max branch"),
    (["method.name=simclr", "method.predictor=true"], "no predictor on the max branch"),
    (["method.aux_head=false"], "set method.aux_head=true"),
    (["method.name=byol_noaux", "method.base_loss=byol", "method.aux_head=true"], "no auxiliary head"),
    (["method.name=byol_noaux"], "use method.name=us3l"),
    (["method.name=simclr", "method.feature_distill_weight=1.0"], "us3l only"),
    (["model.arch=mobilenet_v2", "model.cifar_stem=false", "method.feature_distill_weight=1.0"], "ResNet"),
    (["method.predictor=maybe"], "true, false or null"),
    (["method.proj_layers=0"], "proj_layers"),
])
def test_head_combinations_that_cannot_train_are_refused_when_read(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(os.path.join(ROOT, "configs", "us3l_cifar100_r18.yaml"), overrides)


def test_method_defaults_choose_the_heads():
    base = {"model": {"cifar_stem": False}, "method": dict(SMALL)}
    want = {("us3l", "byol"): (True, True), ("us3l", "simclr_momentum"): (False, True), ("us3l", "moco"): (True, True),
            ("byol_noaux", "byol"): (True, False), ("simsiam_naive", "byol"): (True, False),
            ("simsiam_inplace", "byol"): (True, False), ("simclr", "byol"): (False, False)}
    for (name, loss), (pred, aux) in want.items():
        d = {k: dict(v) for k, v in base.items()}
        d["method"].update(name=name, base_loss=loss)
        online = build_method(config_from_dict(d)).online
        assert (online.predictor is not None, online.aux_head is not None) == (pred, aux), (name, loss)


# -- US-MobileNetV2 channel rounding ------------------------------------------------------------------------------
def reference_make_divisible(v, divisor=8, min_value=1):
    """slimmable_ops.make_divisible of the reference, transcribed (note its min_value defaults to 1)."""
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def reference_channels(c_max, width, ratio=1):
    """USConv2d / USBatchNorm2d of the reference: ``make_divisible(c_max * width / ratio) * ratio``."""
    return reference_make_divisible(c_max * width / ratio) * ratio


def reference_mobilenet_v2_layers():
    """The reference us_mobilenet_v2 in module order: ("conv", c_in, r_in, sliced_in, c_out, r_out, sliced_out,
    depthwise) or ("bn", c, ratio, sliced). Stem (3 -> 32, input not sliced), inverted residual blocks (t, c, n, s) with
    expand 1x1 ratio [1, t], depthwise ratio [t, t], project ratio [t, 1], and the 320 -> 1280 head whose output
    (and its plain BatchNorm2d) stays full."""
    layers = [("conv", 3, 1, False, 32, 1, True, False), ("bn", 32, 1, True)]
    inp = 32
    for t, c, n, _ in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                       (6, 320, 1, 1)]:
        for _ in range(n):
            hidden = inp * t
            if t != 1:
                layers += [("conv", inp, 1, True, hidden, t, True, False), ("bn", hidden, t, True)]
            layers += [("conv", hidden, t, True, hidden, t, True, True), ("bn", hidden, t, True),
                       ("conv", hidden, t, True, c, 1, True, False), ("bn", c, 1, True)]
            inp = c
    return layers + [("conv", 320, 1, True, 1280, 1, False, False), ("bn", 1280, 1, False)]


def expected_counts(width):
    out = []
    for layer in reference_mobilenet_v2_layers():
        if layer[0] == "conv":
            _, ci, ri, si, co, ro, so, _ = layer
            out.append((reference_channels(ci, width, ri) if si else ci,
                        reference_channels(co, width, ro) if so else co))
        else:
            _, c, r, s = layer
            out.append(reference_channels(c, width, r) if s else c)
    return out


def our_counts(model):
    out = []
    for mod in model.modules():
        if isinstance(mod, USConv2d):
            out.append(mod.active_in_out())
        elif isinstance(mod, USBatchNorm2d):
            out.append(mod.active_features())
    return out


def test_mobilenet_v2_channel_rounding_equals_the_reference_on_a_fine_grid():
    model = build_us_model("mobilenet_v2")
    assert len(our_counts(model)) == len(reference_mobilenet_v2_layers())
    differs_from_plain_rule = 0
    for i in range(250, 1001):  # every 0.001 in [0.25, 1.0]
        w = i / 1000
        set_width(model, w)
        assert our_counts(model) == expected_counts(w), w
        differs_from_plain_rule += reference_channels(144, w, 6) != reference_channels(144, w)
    assert differs_from_plain_rule > 100  # the ratio rule matters: a plain rounding of 144 channels fails here


@pytest.mark.parametrize("width", [0.25, 0.3, 0.325, 0.55, 0.875])
def test_mobilenet_v2_runs_and_exports_with_the_reference_counts(width):
    model = build_us_model("mobilenet_v2").eval()
    set_width(model, width)
    hidden = [c[1] for c, layer in zip(our_counts(model), reference_mobilenet_v2_layers())
              if layer[0] == "conv" and layer[5] == 6]
    assert len(hidden) == 32
    assert all(h % 6 == 0 for h in hidden)
    model.train()
    assert model.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 1280)
    static = build_static_model("mobilenet_v2", width)
    convs = [tuple(m.weight.shape[:2]) for m in static.modules() if isinstance(m, nn.Conv2d)]
    conv_layers = [layer for layer in reference_mobilenet_v2_layers() if layer[0] == "conv"]
    conv_counts = [c for c, layer in zip(expected_counts(width), reference_mobilenet_v2_layers()) if layer[0] == "conv"]
    assert convs == [(co, 1 if layer[7] else ci) for (ci, co), layer in zip(conv_counts, conv_layers)]
