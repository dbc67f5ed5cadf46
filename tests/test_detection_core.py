"""us3l.detection, the framework-agnostic core of the slimmable detector (torch only).

Equality checks compare a slimmed layer at width w with a PLAIN torch layer built independently at the channel
counts of that width and given the prefix slice of the weights, i.e. the definition of "the model at width w".
"""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import us3l
from us3l.detection import (
    SandwichConfig,
    box_cls_distill_loss,
    calibrate_detector,
    neck_head_channels,
    objectness_distill_loss,
    require_calibrated,
    reset_bn_statistics,
    sample_widths,
    sandwich_step,
    slimmify,
)
from us3l.models import us_resnet18
from us3l.ops import active_channels


def _box_head(c=64, res=7, fc=256, classes=5):
    head = nn.Sequential()
    head.add_module("flatten", nn.Flatten())
    head.add_module("fc1", nn.Linear(c * res * res, fc))
    head.add_module("relu1", nn.ReLU())
    head.add_module("fc2", nn.Linear(fc, fc))
    head.add_module("relu2", nn.ReLU())
    head.add_module("cls", nn.Linear(fc, classes))
    return head


def test_slimmified_box_head_equals_a_plain_head_at_the_width():
    torch.manual_seed(0)
    head = _box_head()
    slimmify(head, keep_out=["cls"], flatten={"fc1": 49})
    w = 0.25
    c, fc = active_channels(64, w), active_channels(256, w)
    x = torch.randn(3, c, 7, 7)
    us3l.set_width(head, w)
    got = head(x)
    # plain layers at the width's channel counts; fc1 keeps the first c*49 inputs: flatten is channel-major
    w1, b1 = head.fc1.weight[:fc, : c * 49], head.fc1.bias[:fc]
    ref = F.relu(F.linear(torch.flatten(x, 1), w1, b1))
    ref = F.relu(F.linear(ref, head.fc2.weight[:fc, :fc], head.fc2.bias[:fc]))
    ref = F.linear(ref, head.cls.weight[:, :fc], head.cls.bias)
    assert got.shape == (3, 5)
    torch.testing.assert_close(got, ref)
    # channel-major prefix: the first c channels' features are the first c*49 flattened columns
    full = torch.zeros(1, 64, 7, 7)
    full[:, :c] = x[:1]
    assert torch.equal(torch.flatten(full, 1)[:, : c * 49], torch.flatten(x[:1], 1))


def test_slimmify_shares_parameters_and_keeps_names():
    conv = nn.Sequential(nn.Conv2d(32, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ConvTranspose2d(16, 16, 2, 2))
    before = {k: v for k, v in conv.state_dict().items()}
    params = [p for p in conv.parameters()]
    names = slimmify(conv)
    assert names == ["0", "1", "2"]
    assert set(conv.state_dict()) == set(before)
    assert all(a is b for a, b in zip(params, conv.parameters()))  # same tensors: the optimizer sees them
    us3l.set_width(conv, 0.5)
    conv.train()
    y = conv(torch.randn(2, 16, 8, 8))
    assert y.shape == (2, 8, 16, 16)


def test_deconv_at_width_equals_plain_deconv():
    torch.manual_seed(0)
    m = nn.Sequential(nn.ConvTranspose2d(64, 64, 2, 2))
    slimmify(m)
    us3l.set_width(m, 0.375)
    c = active_channels(64, 0.375)
    x = torch.randn(2, c, 5, 5)
    plain = nn.ConvTranspose2d(c, c, 2, 2)
    plain.weight.data.copy_(m[0].weight[:c, :c])
    plain.bias.data.copy_(m[0].bias[:c])
    torch.testing.assert_close(m(x), plain(x))


def test_slimmify_refuses_groupnorm_and_unknown_names():
    with pytest.raises(ValueError, match="GroupNorm"):
        slimmify(nn.Sequential(nn.Conv2d(8, 8, 1), nn.GroupNorm(2, 8)))
    with pytest.raises(KeyError, match="nope"):
        slimmify(nn.Sequential(nn.Conv2d(8, 8, 1)), keep_out=["nope"])


def test_python_lists_of_layers_follow_the_swap():
    class FPNLike(nn.Module):
        def __init__(self):
            super().__init__()
            self.lat = nn.Conv2d(32, 16, 1)
            self.convs = [self.lat]  # a plain list, as Detectron2's FPN keeps

        def forward(self, x):
            return self.convs[0](x)

    m = FPNLike()
    slimmify(m)
    assert m.convs[0] is m.lat and isinstance(m.lat, us3l.ops.USConv2d)
    us3l.set_width(m, 0.5)
    assert m(torch.randn(1, 16, 4, 4)).shape == (1, 8, 4, 4)


def test_sandwich_widths_are_a_function_of_seed_and_iteration():
    cfg = SandwichConfig(width_range=(0.25, 1.0), num_random=3, seed=7)
    a = sample_widths(cfg, 5)
    assert a == sample_widths(cfg, 5)  # resume / other ranks draw the same widths
    assert a[0] == 1.0 and a[-1] == 0.25 and len(a) == 5
    assert all(0.25 <= w <= 1.0 for w in a) and a == sorted(a, reverse=True)
    assert sample_widths(cfg, 6) != a
    assert sample_widths(SandwichConfig(num_random=3, seed=8), 5) != a
    assert sample_widths(SandwichConfig(num_random=0), 0) == [1.0, 0.25]
    with pytest.raises(ValueError):
        SandwichConfig(num_random=-1)
    with pytest.raises(ValueError):
        SandwichConfig(width_range=(0.0, 1.0))


def test_sandwich_step_accumulates_the_gradients_of_every_width():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 4, 1))
    slimmify(m, keep_in=["0"], keep_out=["2"])
    x = torch.randn(2, 3, 8, 8)
    widths = [1.0, 0.5, 0.25]

    def loss(w, i):
        return {"l": m(x).pow(2).mean()}

    m.zero_grad()
    logged = sandwich_step(m, widths, loss)
    assert us3l.get_width(m) == 1.0  # left at the max width
    got = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    for w in widths:  # reference: the sum of the per-width gradients
        us3l.set_width(m, w)
        (m(x).pow(2).mean()).backward()
    for g, r in zip(got, [p.grad for p in m.parameters()]):
        torch.testing.assert_close(g, r)
    assert set(logged) == {"l/max", "l/rand1", "l/min"}


def test_sandwich_step_refuses_nonfinite_losses():
    m = nn.Sequential(nn.Conv2d(3, 8, 1))
    slimmify(m, keep_in=["0"])
    with pytest.raises(FloatingPointError, match="width 0.5"):
        sandwich_step(m, [1.0, 0.5],
                      lambda w, i: {"l": m(torch.randn(1, 3, 2, 2)).sum() * (float("nan") if w < 1 else 1)})


def test_distillation_losses():
    t = [torch.randn(2, 3, 4, 4), torch.randn(2, 3, 2, 2)]
    s = [x.clone().requires_grad_() for x in t]
    loss = objectness_distill_loss(s, t)
    loss.backward()  # minimum at the teacher: zero gradient there
    assert all(x.grad.abs().max() < 1e-6 for x in s)
    assert objectness_distill_loss([torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 2, 2)], t) > loss
    with pytest.raises(ValueError, match="anchors"):
        objectness_distill_loss([torch.zeros(2, 3, 4, 4), torch.zeros(1)], t)
    logits = torch.randn(6, 5)
    same = box_cls_distill_loss(logits.clone(), logits)
    assert box_cls_distill_loss(torch.zeros(6, 5), logits) > same
    ent = -(F.softmax(logits, -1) * F.log_softmax(logits, -1)).sum(-1).mean()
    torch.testing.assert_close(same, ent)  # soft cross-entropy at the teacher = the teacher's entropy


def test_calibration_and_the_uncalibrated_width_rule():
    torch.manual_seed(0)
    backbone = us_resnet18(num_classes=0)
    neck = nn.Sequential(nn.Conv2d(512, 64, 1), nn.BatchNorm2d(64))
    slimmify(neck)
    detector = nn.ModuleDict({"backbone": backbone, "neck": neck})

    class Feats(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone, self.neck = backbone, neck

        def forward(self, x):
            return self.neck(self.backbone.forward_stages(x)[-1])

    images = [torch.randn(2, 3, 64, 64) for _ in range(3)]
    with pytest.raises(us3l.UncalibratedWidthError, match="calibrate_detector.py"):
        require_calibrated(detector, 0.5)
    used = calibrate_detector(detector, Feats(), images, [1.0, 0.5])
    assert used == {1.0: 3, 0.5: 3}
    require_calibrated(detector, 0.5)
    require_calibrated(detector, 1.0)
    with pytest.raises(us3l.UncalibratedWidthError, match="0.25"):
        require_calibrated(detector, 0.25)
    # statistics travel in the state dict, per width
    state = detector.state_dict()
    assert state["neck.1.running_mean_w0500"].shape == (32,)
    # the neck at width 0.5 in eval mode uses exactly its calibrated statistics
    detector.eval()
    us3l.set_width(detector, 0.5)
    f = Feats()(images[0])
    assert f.shape[1] == 32
    assert reset_bn_statistics(detector) > 0
    assert us3l.calibrated_widths(detector) == []
    with pytest.raises(ValueError, match="outside the calibrated parts"):
        calibrate_detector(detector, backbone, images, [1.0])


def test_evaluation_widths_are_range_checked_then_calibrated_or_refused(tmp_path):
    """us3l.detection.calibration.prepare_widths, the first step of both frameworks' per-width evaluation."""
    import os

    from us3l.detection.calibration import prepare_widths

    model = us_resnet18(num_classes=0)
    us3l.calibrate_bn(model, [torch.randn(2, 3, 32, 32)], 1.0)
    calls = []
    steps = dict(calibrate=lambda missing: calls.append(("calibrate", missing)),
                 save=lambda path, meta: calls.append(("save", path, meta)), log=lambda msg: None)
    with pytest.raises(ValueError):  # outside the width range: nothing made, nothing calibrated
        prepare_widths(model, [1.0, 0.1], "ck.pth", str(tmp_path / "a"), 4, **steps)
    assert not (tmp_path / "a").exists() and not calls
    with pytest.raises(us3l.UncalibratedWidthError, match="--calibrate-batches"):
        prepare_widths(model, [1.0, 0.5], "ck.pth", str(tmp_path / "b"), 0, **steps)
    assert prepare_widths(model, [1.0], "ck.pth", str(tmp_path / "c"), 0, **steps) == [1.0] and not calls
    assert prepare_widths(model, [1.0, 0.5], "ck.pth", str(tmp_path / "d"), 2, **steps) == [1.0, 0.5]
    assert calls == [("calibrate", [0.5]),
                     ("save", str(tmp_path / "d" / "model_calibrated.pth"), {"source": os.path.abspath("ck.pth")})]


def test_export_channel_rule():
    full = {"fpn": 256, "fc": 1024, "mask": 256}
    assert neck_head_channels(full, 1.0) == full
    assert neck_head_channels(full, 0.25) == {"fpn": 64, "fc": 256, "mask": 64}
    assert neck_head_channels(full, 0.25, slim_neck_heads=False) == full
    assert neck_head_channels({"fpn": 64}, 0.3) == {"fpn": active_channels(64, 0.3)}
