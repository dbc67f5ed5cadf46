"""Grad-free forwards reuse per-width tensors: outputs equal a fresh static export after every kind of change.

The reference is always a NEW ``us3l.export_static`` of the current weights (a plain torchvision-layout
model), built after the change, so a stale cache in the slimmable model cannot hide in the reference.
"""
import copy

import pytest
import torch

import us3l
from us3l.inference import cached_bytes, clear_cache
from us3l.models import us_mobilenet_v2, us_resnet18
from us3l.ops import USConv2d, USLinear

WIDTHS = (0.25, 0.35, 0.5, 0.8, 1.0)


def _calibrate(model, widths, seed=0):
    g = torch.Generator().manual_seed(seed)
    batches = [torch.randn(4, 3, 32, 32, generator=g) for _ in range(2)]
    for w in widths:
        us3l.calibrate_bn(model, batches, w)


def _assert_matches_export(model, w, x, atol=1e-5):
    ref = us3l.export_static(model, w)
    us3l.set_width(model, w)
    with torch.no_grad():
        got = model(x)
        want = ref(x)
    assert torch.allclose(got, want, atol=atol, rtol=1e-5), (w, (got - want).abs().max())


@pytest.fixture
def resnet():
    torch.manual_seed(0)
    model = us_resnet18(num_classes=10)
    _calibrate(model, WIDTHS)
    return model.eval()


def _train_step(model, opt, w=0.5):
    model.train()
    us3l.set_width(model, w)
    opt.zero_grad()
    model(torch.randn(4, 3, 32, 32)).square().mean().backward()
    opt.step()


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_eval_equals_export_at_odd_widths_and_reuses_tensors(arch):
    torch.manual_seed(0)
    model = us_resnet18(num_classes=10) if arch == "resnet18" else us_mobilenet_v2(num_classes=10)
    _calibrate(model, WIDTHS)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    for w in WIDTHS:
        _assert_matches_export(model, w, x)
        convs = [m for m in model.modules() if isinstance(m, USConv2d)]
        first = [m._slice_cache.value[0] for m in convs]
        with torch.no_grad():
            model(x)
        assert all(m._slice_cache.value[0] is t for m, t in zip(convs, first)), "second forward re-sliced"


def test_cache_follows_an_optimizer_step(resnet):
    x = torch.randn(2, 3, 32, 32)
    _assert_matches_export(resnet, 0.35, x)  # populate the cache at 0.35
    for opt in (torch.optim.SGD(resnet.parameters(), lr=0.5, momentum=0.9),
                torch.optim.Adam(resnet.parameters(), lr=0.1, fused=True)):  # fused: no version bump
        _train_step(resnet, opt, 0.35)
        _calibrate(resnet, [0.35])
        resnet.eval()
        _assert_matches_export(resnet, 0.35, x)


def test_optimizer_step_without_train_eval_toggle(resnet):
    """Weights stepped while the model stays in eval mode (frozen-BN fine-tuning) are seen at once."""
    x = torch.randn(2, 3, 32, 32)
    for fused in (False, True):
        us3l.set_width(resnet, 0.35)
        with torch.no_grad():
            before = resnet(x)
        opt = torch.optim.Adam(resnet.parameters(), lr=0.1, fused=fused)
        resnet(torch.randn(2, 3, 32, 32)).sum().backward()  # eval mode, with grad
        opt.step()
        _assert_matches_export(resnet, 0.35, x)
        with torch.no_grad():
            assert not torch.allclose(resnet(x), before)


def test_cache_follows_load_state_dict(resnet):
    x = torch.randn(2, 3, 32, 32)
    _assert_matches_export(resnet, 0.8, x)
    torch.manual_seed(1)
    other = us_resnet18(num_classes=10)
    _calibrate(other, WIDTHS, seed=1)
    resnet.load_state_dict(other.state_dict())
    assert cached_bytes(resnet) == 0  # loading drops the copies
    _assert_matches_export(resnet, 0.8, x)
    us3l.set_width(other, 0.8)
    with torch.no_grad():
        assert torch.allclose(resnet(x), other.eval()(x), atol=1e-5)


def test_cache_follows_bn_calibration(resnet):
    x = torch.randn(2, 3, 32, 32)
    _assert_matches_export(resnet, 0.5, x)
    with torch.no_grad():
        before = resnet(x)
    calib = [torch.randn(4, 3, 32, 32) * 3 + 1]
    us3l.calibrate_bn(resnet, calib, 0.5)
    _assert_matches_export(resnet, 0.5, x)
    with torch.no_grad():
        assert not torch.allclose(resnet(x), before)
    us3l.calibrate_bn(resnet, calib, 1.0)  # width 1.0 statistics are updated in place
    _assert_matches_export(resnet, 1.0, x)


def _weights_bytes(model):
    return sum(m.weight.numel() * 4 for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))


def test_width_switches_reuse_copies_within_a_memory_bound(resnet):
    """The copies of the last widths stay (a switch back re-slices nothing); together never more bytes than the
    full-width weights; ``keep_widths(model, 1)`` keeps only the last width's, as small as its static network."""
    from us3l.inference import keep_widths

    x = torch.randn(2, 3, 32, 32)
    full = _weights_bytes(resnet)
    convs = [m for m in resnet.modules() if isinstance(m, USConv2d)]
    made = {}
    # any order: outputs equal a fresh export; the last 0.5 needs room beyond the budget, so the oldest goes
    for w in (0.25, 0.8, 0.35, 1.0, 0.8, 0.25, 0.35, 1.0, 0.8, 0.5):
        _assert_matches_export(resnet, w, x)
        assert 0 < cached_bytes(resnet) <= full
        current = [m._slice_cache.value[0] for m in convs]
        if w in made:  # still kept (4 widths per layer, 0.82 of the weights here): the very same tensors
            assert all(a is b for a, b in zip(current, made[w])), f"switching back to {w} re-sliced"
        made[w] = current
    keep_widths(resnet, 1)
    for w in (0.25, 0.8, 0.35, 0.8):
        _assert_matches_export(resnet, w, x)
        assert 0 < cached_bytes(resnet) <= _weights_bytes(us3l.export_static(resnet, w))
    twin = copy.deepcopy(resnet)  # e.g. an EMA teacher: copies start without the original's copies
    assert cached_bytes(twin) == 0 and cached_bytes(resnet) > 0
    with torch.no_grad():
        assert torch.equal(twin(x), resnet(x))
    keep_widths(resnet, 4)
    us3l.set_width(resnet, 1.0)
    resnet.eval()
    with torch.no_grad():
        resnet(x)
    assert cached_bytes(resnet) == 0  # width 1.0 runs on the parameters themselves
    _assert_matches_export(resnet, 0.5, x)
    resnet.train()
    assert cached_bytes(resnet) == 0  # train()/eval() drop the copies
    with pytest.raises(ValueError, match="k >= 1"):
        keep_widths(resnet, 0)


def test_in_place_updates_are_seen_and_data_writes_need_clear_cache(resnet):
    x = torch.randn(2, 3, 32, 32)
    _assert_matches_export(resnet, 0.5, x)
    with torch.no_grad():  # an EMA-style update: no optimizer, no train()/eval()
        for p in resnet.parameters():
            p.mul_(0.9).add_(0.01)
    _assert_matches_export(resnet, 0.5, x)
    conv = resnet.layer1[0].conv1
    conv.weight.data.mul_(2.0)  # invisible to version counters: the documented escape hatch
    clear_cache(resnet)
    _assert_matches_export(resnet, 0.5, x)


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_no_grad_and_inference_mode_both_fine(resnet, mode):
    x = torch.randn(2, 3, 32, 32)
    ctx = torch.no_grad if mode == "no_grad" else torch.inference_mode
    ref = us3l.export_static(resnet, 0.35)
    us3l.set_width(resnet, 0.35)
    with torch.no_grad():
        want = ref(x)
    with ctx():
        a = resnet(x)
    with torch.no_grad() if mode == "inference_mode" else torch.inference_mode():
        b = resnet(x)  # the other mode: a cached tensor from one mode is not reused in the other
    assert torch.allclose(a, want, atol=1e-5) and torch.allclose(b, want, atol=1e-5)
    # after inference mode, autograd works again (no inference tensor is saved for backward)
    resnet.train()
    resnet(x).sum().backward()
    assert resnet.conv1.weight.grad is not None


@pytest.mark.parametrize("layer", ["conv", "linear"])
def test_training_gradients_equal_plain_slicing(layer):
    torch.manual_seed(0)
    if layer == "conv":
        mod = USConv2d(16, 24, 3, padding=1, bias=True)
        x = torch.randn(2, 8, 5, 5, requires_grad=True)
        ref_fn = lambda w, b, x: torch.nn.functional.conv2d(x, w[:16, :8], b[:16], 1, 1)  # noqa: E731
    else:
        mod = USLinear(16, 32, slice_out=True)
        x = torch.randn(3, 8, requires_grad=True)
        ref_fn = lambda w, b, x: torch.nn.functional.linear(x, w[:16, :8], b[:16])  # noqa: E731
    us3l.set_width(mod, 0.5)
    with torch.no_grad():
        mod(x)  # a cached grad-free slice must not leak into the autograd path
    out = mod(x)
    g = torch.randn_like(out)
    out.backward(g)
    w = mod.weight.detach().clone().requires_grad_()
    b = mod.bias.detach().clone().requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    ref = ref_fn(w, b, x2)
    ref.backward(g)
    # same values (the GEMM may sum in another order for a contiguous vs strided weight), and exact zeros
    # outside the active slice
    assert torch.allclose(out, ref, atol=1e-6)
    for got, want in ((mod.weight.grad, w.grad), (mod.bias.grad, b.grad), (x.grad, x2.grad)):
        assert got.shape == want.shape and torch.allclose(got, want, atol=1e-6)
        assert torch.equal(got == 0, want == 0)


def test_training_model_gradients_match_static_export():
    """A train-mode slimmable model's gradients, sliced to the width, equal the static network's."""
    torch.manual_seed(0)
    model = us_resnet18(num_classes=10).train()
    _calibrate(model, [0.35])
    static = us3l.export_static(model, 0.35).train()
    us3l.set_width(model, 0.35)
    x = torch.randn(4, 3, 32, 32)
    model(x).square().sum().backward()
    static(x).square().sum().backward()
    sp = dict(static.named_parameters())
    for name, p in model.named_parameters():
        ref = sp[name].grad
        idx = tuple(slice(0, s) for s in ref.shape)
        assert torch.allclose(p.grad[idx], ref, atol=1e-4, rtol=1e-4), name
        rest = p.grad.clone()
        rest[idx] = 0
        assert not rest.any(), f"{name}: gradient outside the active slice"


def test_prepare_makes_the_next_forward_reuse_tensors(resnet):
    from us3l.inference import prepare

    us3l.set_width(resnet, 0.35)
    prepare(resnet)
    convs = [m for m in resnet.modules() if isinstance(m, USConv2d)]
    made = [m._slice_cache.value[0] for m in convs]
    with torch.no_grad():
        resnet(torch.randn(1, 3, 32, 32))
    assert all(m._slice_cache.value[0] is t for m, t in zip(convs, made))
    us3l.set_width(resnet, 0.3)  # not calibrated: prepare fails as the forward would
    with pytest.raises(us3l.UncalibratedWidthError):
        prepare(resnet)


def test_tracing_records_the_slicing_not_cached_tensors(resnet):
    """A trace after grad-free forwards must still read the parameters (not tensors cached earlier)."""
    x = torch.randn(2, 3, 32, 32)
    us3l.set_width(resnet, 0.35)
    with torch.no_grad():
        resnet(x)  # fills the caches
        traced = torch.jit.trace(resnet, x, check_trace=False)
        for p in resnet.parameters():
            p.mul_(1.5)
        assert torch.allclose(traced(x), resnet(x), atol=1e-5)
