"""Width sampling, dynamic sampling, group regularization, EMA and losses: the method doc's numbers."""
import math
import random

import pytest
import torch
import torch.nn as nn

from us3l.ssl.ema import ema_update, make_teacher, momentum_at
from us3l.ssl.group_reg import GroupRegularizer, alpha_at, bin_multipliers, bin_sizes
from us3l.ssl.losses import cross_view_cosine, info_nce, neg_cosine, normalized_std, nt_xent
from us3l.ssl.width_sampling import WidthSampler, dynamic_min_width, sandwich_widths


def test_sandwich_three_widths():
    for seed in range(20):
        ws = sandwich_widths(0.25, 3, random.Random(seed))
        assert ws[0] == 1.0 and ws[-1] == 0.25 and len(ws) == 3 and 0.25 < ws[1] < 1.0


@pytest.mark.parametrize("n", [4, 6, 8])
def test_sandwich_no_duplicates_for_more_widths(n):
    for seed in range(20):
        ws = sandwich_widths(0.25, n, random.Random(seed))
        assert len(ws) == n == len(set(ws)), ws
        assert ws == sorted(ws, reverse=True) and ws[0] == 1.0 and ws[-1] == 0.25


def test_dynamic_sampling_stages():
    assert dynamic_min_width(0.0, 0.25) is None and dynamic_min_width(0.24, 0.25) is None
    assert dynamic_min_width(0.25, 0.25) == 0.75
    assert dynamic_min_width(0.6, 0.25) == 0.5
    assert dynamic_min_width(0.99, 0.25) == 0.25
    s = WidthSampler((0.25, 1.0), 3, dynamic=True, seed=0)
    total = 100
    assert all(s(it, total) == [1.0] for it in range(25))
    for it in range(25, 100):
        ws = s(it, total)
        expect_min = [0.75, 0.5, 0.25][(it - 25) // 25]
        assert ws[0] == 1.0 and ws[-1] == expect_min and len(ws) == 3 and expect_min <= ws[1] <= 1.0
    # pure function of (seed, iteration): resumed / distributed runs agree
    again = WidthSampler((0.25, 1.0), 3, True, seed=0)
    assert [s(i, total) for i in range(100)] == [again(i, total) for i in range(100)]
    # cost: stage 1 runs 1 pass, others 3 -> 10 passes per 4 iterations vs 12 (0.83x)
    passes = sum(len(s(i, total)) for i in range(total))
    always = sum(len(WidthSampler((0.25, 1.0), 3, False)(i, total)) for i in range(total))
    assert passes / always == pytest.approx(0.8333, abs=0.01)


def test_group_reg_bins_and_multipliers():
    assert bin_sizes(64, 8) == [8] * 8
    assert bin_sizes(20, 8) == [2] * 7 + [6]
    assert bin_multipliers(8, 0.05, "linear") == pytest.approx([1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65])
    assert bin_multipliers(3, 0.5, "exp") == pytest.approx([1.0, 0.5, 0.25])
    # alpha_t: 0 before warm-up, linear ramp to alpha by the ramp end
    assert alpha_at(0.05, "linear", 5, 10, 50) == 0.0
    assert alpha_at(0.05, "linear", 30, 10, 50) == pytest.approx(0.025)
    assert alpha_at(0.05, "linear", 80, 10, 50) == pytest.approx(0.05)
    assert alpha_at(0.9, "exp", 0, 10, 50) == 1.0


def test_group_reg_penalty_matches_formula():
    gr = GroupRegularizer(lam=5e-5, alpha=0.05, bins=8)
    conv = torch.randn(16, 3, 3, 3, requires_grad=True)
    bias = torch.randn(16, requires_grad=True)
    lin = torch.randn(10, 16, requires_grad=True)
    got = gr.penalty([conv, bias, lin], 0.05)
    mult = torch.tensor([1 - 0.05 * (i // 2) for i in range(16)])
    want = (5e-5 * mult * conv.detach().pow(2).flatten(1).sum(1)).sum() + (5e-5 * mult * bias.detach() ** 2).sum() \
        + 5e-5 * lin.detach().pow(2).sum()
    assert float(got.detach()) == pytest.approx(float(want), rel=1e-5)
    got.backward()
    assert torch.allclose(bias.grad, 2 * 5e-5 * mult * bias.detach())  # later channels pulled less


def test_ema_update_and_schedule():
    online = nn.Linear(4, 4)
    teacher = make_teacher(online)
    assert all(not p.requires_grad for p in teacher.parameters())
    before = teacher.weight.detach().clone()
    with torch.no_grad():
        online.weight.add_(1.0)
    ema_update(teacher, online, 0.99)
    assert torch.allclose(teacher.weight, 0.99 * before + 0.01 * online.weight.detach())
    assert momentum_at(0.99, "constant", 0.7) == 0.99
    assert momentum_at(0.99, "cosine", 0.0) == pytest.approx(0.99)
    assert momentum_at(0.99, "cosine", 1.0) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        momentum_at(0.99, "linear", 0.5)


def test_cosine_gradient_is_set_by_target():
    p = torch.randn(5, 8, requires_grad=True)
    t = torch.randn(5, 8)
    neg_cosine(p, t).backward()
    # the gradient lies in the span of the target and p (no other sample involved)
    g = p.grad
    for i in range(5):
        basis = torch.stack([p.detach()[i], t[i]], 1)
        coef = torch.linalg.lstsq(basis, g[i:i + 1].t()).solution
        assert torch.allclose(basis @ coef, g[i:i + 1].t(), atol=1e-6)
    z = torch.randn(6, 8)
    assert float(cross_view_cosine(z, z, z, z)) == pytest.approx(-1.0, abs=1e-6)


def test_contrastive_losses_prefer_matching_pairs():
    torch.manual_seed(0)
    z = torch.randn(16, 32)
    assert float(info_nce(z * 10, z, 0.1)) < float(info_nce(z, torch.randn(16, 32), 0.1))
    assert float(nt_xent(z, z + 0.01 * torch.randn_like(z), 0.1)) < float(nt_xent(z, torch.randn(16, 32), 0.1))


def test_collapse_metric():
    z = torch.randn(256, 64)
    assert normalized_std(z) * math.sqrt(64) == pytest.approx(1.0, abs=0.1)
    assert normalized_std(torch.ones(256, 64) + 1e-6 * torch.randn(256, 64)) < 1e-3


def test_collapse_monitor_warns_once(caplog):
    import logging

    from us3l.engine.logging import CollapseMonitor

    log = logging.getLogger("test.collapse")
    mon = CollapseMonitor(0.1, log)
    with caplog.at_level(logging.WARNING, logger="test.collapse"):
        assert mon.update(0.25, 0.5 / math.sqrt(64), 64, 1) == pytest.approx(0.5)
        assert not caplog.records
        mon.update(0.25, 0.01 / math.sqrt(64), 64, 2)
        mon.update(0.25, 0.01 / math.sqrt(64), 64, 3)
    assert len(caplog.records) == 1 and "COLLAPSE WARNING" in caplog.text and "0.250" in caplog.text
