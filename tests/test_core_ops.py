"""Slimmable ops: channel rounding, prefix slicing, and that a width really changes the computation."""
import pytest
import torch

import us3l
from us3l.ops import USBatchNorm2d, USConv2d, USLinear, make_divisible


@pytest.mark.parametrize("width,expected", [
    (0.25, [16, 32, 64, 128, 256, 512]),
    (0.5, [32, 64, 128, 256, 512, 1024]),
    (0.75, [48, 96, 192, 384, 768, 1536]),
    (0.3, [24, 40, 80, 152, 304, 616]),
])
def test_make_divisible_matches_method_doc(width, expected):
    assert [make_divisible(c * width) for c in (64, 128, 256, 512, 1024, 2048)] == expected


def test_make_divisible_never_below_90_percent():
    for c in range(8, 2049, 8):
        for w in (0.25, 0.3, 0.35, 0.41, 0.5, 0.66, 0.9):
            v = make_divisible(c * w)
            assert v % 8 == 0 and v >= 8 and v >= 0.9 * c * w


def test_conv_uses_prefix_slice_of_weight():
    conv = USConv2d(16, 32, 3, padding=1)
    us3l.set_width(conv, 0.5)
    x = torch.randn(2, 8, 10, 10)
    ref = torch.nn.functional.conv2d(x, conv.weight[:16, :8], None, 1, 1)
    assert torch.equal(conv(x), ref)


def test_conv_rejects_inconsistent_input_channels():
    conv = USConv2d(16, 32, 3, padding=1)
    us3l.set_width(conv, 0.5)
    with pytest.raises(RuntimeError, match="expects 8 input channels"):
        conv(torch.randn(1, 16, 4, 4))


def test_unsliced_input_and_output():
    stem = USConv2d(3, 64, 3, slice_in=False)
    head = USLinear(64, 10)
    us3l.set_width(stem, 0.25)
    us3l.set_width(head, 0.25)
    feats = stem(torch.randn(1, 3, 8, 8))
    assert feats.shape[1] == 16
    assert head(torch.randn(1, 16)).shape == (1, 10)


def test_depthwise_conv_groups_follow_width():
    dw = USConv2d(32, 32, 3, padding=1, groups=32, depthwise=True)
    us3l.set_width(dw, 0.5)
    x = torch.randn(1, 16, 6, 6)
    ref = torch.nn.functional.conv2d(x, dw.weight[:16], None, 1, 1, 1, 16)
    assert torch.equal(dw(x), ref)


def test_bn_training_uses_batch_stats_and_keeps_running_stats():
    bn = USBatchNorm2d(32)
    us3l.set_width(bn, 0.5)
    x = torch.randn(4, 16, 5, 5) * 3 + 1
    y = bn.train()(x)
    assert torch.allclose(y.mean((0, 2, 3)), torch.zeros(16), atol=1e-5)
    assert torch.equal(bn.running_mean, torch.zeros(32)) and torch.equal(bn.running_var, torch.ones(32))


def test_uncalibrated_width_in_eval_raises():
    bn = USBatchNorm2d(32).eval()
    us3l.set_width(bn, 0.5)
    with pytest.raises(us3l.UncalibratedWidthError, match="not calibrated"):
        bn(torch.randn(2, 16, 3, 3))
