"""Per-width BN calibration and fixed-width export."""
import io

import onnx
import pytest
import torch

import us3l
from us3l.checkpoint import load_backbone
from us3l.checkpoint.model_io import load_state_dict_checked, save_model_backbone
from us3l.models import us_resnet18


def _batches(n=3, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 3, size, size, generator=g) * 2 + 0.5 for _ in range(n)]


@torch.no_grad()
def test_calibration_equals_cumulative_average_of_batch_stats():
    model = us_resnet18(num_classes=0, cifar_stem=True)
    batches = _batches()
    us3l.calibrate_bn(model, batches, 0.5)
    # statistics of the first BN = average over batches of the stem conv output's batch statistics
    us3l.set_width(model, 0.5)
    outs = [model.conv1(x) for x in batches]
    mean = torch.stack([o.mean((0, 2, 3)) for o in outs]).mean(0)
    var = torch.stack([o.var((0, 2, 3)) for o in outs]).mean(0)
    got_mean, got_var = model.bn1.width_stats(0.5)
    assert got_mean.shape == (32,)
    assert torch.allclose(got_mean, mean, atol=1e-5) and torch.allclose(got_var, var, atol=1e-4)


@torch.no_grad()
def test_statistics_are_per_width_and_restore_mode():
    model = us_resnet18(num_classes=0, cifar_stem=True).eval()
    us3l.set_width(model, 0.75)
    us3l.calibrate_bn(model, _batches(), 0.5)
    assert not model.training and us3l.get_width(model) == 0.75  # restored
    assert us3l.calibrated_widths(model) == [0.5]
    with pytest.raises(us3l.UncalibratedWidthError):
        model(_batches(1)[0])  # 0.75 never silently uses 0.5's statistics
    us3l.calibrate_bn(model, _batches(), 1.0)
    assert us3l.calibrated_widths(model) == [0.5, 1.0]
    # past the RGB stem, a sub-network's statistics differ from the full network's first channels
    bn = model.layer2[0].bn1
    a = bn.width_stats(0.5)[0]
    b = bn.width_stats(1.0)[0][: a.numel()]
    assert not torch.allclose(a, b)


def test_calibrated_stats_travel_with_the_checkpoint(tmp_path):
    model = us_resnet18(num_classes=0, cifar_stem=True)
    us3l.calibrate_bn(model, _batches(), 0.25)
    us3l.calibrate_bn(model, _batches(), 0.5)
    path = str(tmp_path / "backbone.pth")
    save_model_backbone(model, path)
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "us3l.backbone/1"
    state, meta = load_backbone(path)
    assert meta["arch"] == "resnet18" and meta["cifar_stem"] and meta["calibrated_widths"] == [0.25, 0.5]
    fresh = us_resnet18(num_classes=0, cifar_stem=True)
    load_state_dict_checked(fresh, state)
    assert us3l.calibrated_widths(fresh) == [0.25, 0.5]
    x = _batches(1)[0]
    with torch.no_grad():
        for w in (0.25, 0.5):
            with us3l.width(model.eval(), w), us3l.width(fresh.eval(), w):
                assert torch.equal(model(x), fresh(x))


def test_a_long_calibration_reports_progress(monkeypatch, caplog):
    """``--num-batches 1000000`` used to run silently: each width says how many batches it will use, and a
    progress line comes every PROGRESS_SECONDS (0 here: after every batch)."""
    import us3l.bn_calibration as bc

    monkeypatch.setattr(bc, "PROGRESS_SECONDS", 0.0)
    model = us_resnet18()
    batches = [torch.randn(2, 3, 32, 32) for _ in range(3)]
    with caplog.at_level("INFO", logger="us3l.calibration"):
        us3l.calibrate_bn(model, batches, 0.5, num_batches=3)
    lines = [r.getMessage() for r in caplog.records if r.name == "us3l.calibration"]
    assert lines[0] == "BN calibration at width 0.5: 3 batches"
    assert "BN calibration at width 0.5: 2 / 3 batches" in lines


def test_calibration_rejects_bad_input():
    model = us_resnet18(num_classes=0)
    with pytest.raises(ValueError, match="outside"):
        us3l.calibrate_bn(model, _batches(), 0.1)
    with pytest.raises(ValueError, match="no batches"):
        us3l.calibrate_bn(model, [], 0.5)
    assert us3l.calibrated_widths(model) == []


@torch.no_grad()
@pytest.mark.parametrize("w", [0.25, 0.35, 0.5, 1.0])
def test_export_static_is_plain_smaller_and_identical(w):
    model = us_resnet18(num_classes=10, cifar_stem=True)
    us3l.calibrate_bn(model, _batches(), w)
    static = us3l.export_static(model, w)
    kinds = {type(m) for m in static.modules()}
    assert not any(issubclass(k, us3l.ops.SlimmableMixin) for k in kinds)
    assert torch.nn.Conv2d in kinds and torch.nn.BatchNorm2d in kinds and torch.nn.Linear in kinds
    assert static.conv1.weight.shape[0] == us3l.active_channels(64, w)
    x = _batches(1, seed=1)[0]
    with us3l.width(model.eval(), w):
        assert (static(x) - model(x)).abs().max() <= 1e-5
    n_static = sum(p.numel() for p in static.parameters())
    n_full = sum(p.numel() for p in model.parameters())
    assert (n_static < n_full) == (w < 1.0)


def test_export_uncalibrated_width_is_refused():
    with pytest.raises(us3l.UncalibratedWidthError, match="0.5"):
        us3l.export_static(us_resnet18(num_classes=0), 0.5)


def test_export_traces_and_passes_onnx_checker():
    model = us_resnet18(num_classes=10, cifar_stem=True)
    us3l.calibrate_bn(model, _batches(), 0.5)
    static = us3l.export_static(model, 0.5)
    x = torch.randn(1, 3, 32, 32)
    traced = torch.jit.trace(static, x)
    assert torch.allclose(traced(x), static(x), atol=1e-6)
    buf = io.BytesIO()
    torch.onnx.export(static, (x,), buf, input_names=["images"], output_names=["logits"], dynamo=False)
    proto = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(proto)
    try:
        import onnxruntime as ort
    except ImportError:
        return
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"images": x.numpy()})[0]
    assert abs(out - static(x).detach().numpy()).max() < 1e-4


def test_export_tool_writes_plain_state_and_onnx(tmp_path):
    from tools_loader import load_tool

    model = us_resnet18(num_classes=0, cifar_stem=True)
    us3l.calibrate_bn(model, _batches(), 0.5)
    src = str(tmp_path / "bb.pth")
    save_model_backbone(model, src)
    export_tool = load_tool("export_static")
    export_tool.main([src, str(tmp_path / "r18_w050.pth"), "--width", "0.5", "--onnx", str(tmp_path / "m.onnx"),
                      "--image-size", "32"])
    saved = torch.load(tmp_path / "r18_w050.pth", weights_only=True)
    assert saved["state_dict"]["conv1.weight"].shape[0] == 32 and saved["meta"]["width"] == 0.5
    onnx.checker.check_model(onnx.load(str(tmp_path / "m.onnx")))
    with pytest.raises(us3l.UncalibratedWidthError):
        export_tool.main([src, str(tmp_path / "x.pth"), "--width", "0.75"])
    assert not (tmp_path / "x.pth").exists()
