"""US3L and the baselines at the level of one iteration: who gives the targets, which head, which width."""
import pytest
import torch

import us3l.ssl.methods as methods_mod
from us3l import get_width, set_width
from us3l.engine.config import config_from_dict
from us3l.ssl.methods import build_method

TINY = {"model": {"arch": "resnet18", "cifar_stem": False},
        "method": {"proj_hidden": 64, "proj_dim": 32, "pred_hidden": 16},
        "data": {"batch_size": 4}}


def make(name, **method):
    torch.manual_seed(0)
    d = {k: dict(v) for k, v in TINY.items()}
    d["method"].update(name=name, **method)
    return build_method(config_from_dict(d))


def views(n=4, size=16):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, size, size, generator=g), torch.randn(n, 3, size, size, generator=g)


def run_widths(m, widths, x, it=0, total=10):
    ctx = m.begin_iteration(it, total)
    losses = []
    for w in widths:
        set_width(m.online, w)
        loss, info = m.width_loss(x, ctx)
        losses.append((loss, info))
    set_width(m.online, 1.0)
    return ctx, losses


def test_us3l_teacher_updated_once_and_targets_shared(monkeypatch):
    m = make("us3l")
    calls = []
    real = methods_mod.ema_update
    monkeypatch.setattr(methods_mod, "ema_update", lambda t, o, mom: (calls.append(mom), real(t, o, mom)))
    x = views()
    ctx, losses = run_widths(m, [1.0, 0.6, 0.25], x)
    assert calls == [0.99]  # once per iteration, in the max pass
    assert get_width(m.teacher.backbone) == 1.0
    with torch.no_grad():
        t1, _ = m.teacher(x[0])
    assert torch.equal(ctx["t1"], t1)  # sub-widths distil against the teacher's targets of this iteration
    assert [info["dim"] for _, info in losses] == [32, 32, 32]


def test_us3l_aux_head_only_for_subnetworks():
    m = make("us3l")
    x = views()
    ctx = m.begin_iteration(0, 10)
    loss, _ = m.width_loss(x, ctx)
    loss.backward()
    assert all(p.grad is None for p in m.online.aux_head.parameters())
    assert all(p.grad is not None for p in m.online.predictor.parameters())
    m.online.zero_grad(set_to_none=True)
    set_width(m.online, 0.25)
    loss, _ = m.width_loss(x, ctx)
    loss.backward()
    assert all(p.grad is None for p in m.online.predictor.parameters())
    assert all(p.grad is not None for p in m.online.aux_head.parameters())
    assert all(p.grad is None for p in m.teacher.parameters())
    # the sub-network's gradient only reaches the first 128 output channels of layer4 (width 0.25 of 512)
    g = m.online.backbone.layer4[1].conv2.weight.grad
    assert g[:128, :128].abs().sum() > 0 and g[128:].abs().sum() == 0


def test_byol_noaux_reuses_predictor():
    m = make("byol_noaux")
    assert m.online.aux_head is None
    x = views()
    ctx = m.begin_iteration(0, 10)
    m.width_loss(x, ctx)
    set_width(m.online, 0.5)
    loss, _ = m.width_loss(x, ctx)
    loss.backward()
    assert all(p.grad is not None for p in m.online.predictor.parameters())


def test_inplace_distillation_targets_come_from_online_max():
    m = make("simsiam_inplace")
    assert m.teacher is None
    x = views()
    ctx, _ = run_widths(m, [1.0], x)
    with torch.no_grad():
        z1, _ = m.online.encode(x[0])
    assert torch.allclose(ctx["t1"], z1, atol=1e-6)


def test_max_width_must_come_first():
    m = make("us3l")
    set_width(m.online, 0.5)
    with pytest.raises(RuntimeError, match="first width"):
        m.width_loss(views(), m.begin_iteration(0, 10))


def test_feature_distillation_and_moco_base():
    m = make("us3l", base_loss="moco", feature_distill_weight=1.0, feature_distill_stages=[3, 4])
    x = views()
    ctx, losses = run_widths(m, [1.0, 0.5], x)
    assert len(ctx["ts1"]) == 4 and all(torch.isfinite(loss) for loss, _ in losses)
    losses[1][0].backward()
    assert m.online.adapters["4"].weight.grad is not None


def test_accumulated_gradient_is_sum_of_width_gradients():
    x = views()
    m1, m2 = make("simsiam_naive"), make("simsiam_naive")
    widths = [1.0, 0.5, 0.25]
    ctx = m1.begin_iteration(0, 10)
    for w in widths:  # accumulate: backward per width, no zeroing
        set_width(m1.online, w)
        m1.width_loss(x, ctx)[0].backward()
    ctx = m2.begin_iteration(0, 10)
    total = 0
    for w in widths:
        set_width(m2.online, w)
        total = total + m2.width_loss(x, ctx)[0]
    total.backward()
    for (n, a), b in zip(m1.online.named_parameters(), m2.online.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6, rtol=1e-4), n
