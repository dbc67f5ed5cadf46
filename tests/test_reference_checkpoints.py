"""The reference code's three kinds of files, built from an independent description of its layout
(tests/reference_layout.py), read by the core: backbone, statistics per width, dropped keys listed."""
import pytest
import torch
from reference_layout import arch_layers, calibrated_file, channels_at, detection_file, pretrain_file, us3l_names

import us3l
from us3l.checkpoint import CheckpointError, LoadReport, extract_backbone, fit_backbone, load_backbone
from us3l.checkpoint.combine import combine_calibrated
from us3l.checkpoint.model_io import build_model_from_checkpoint
from us3l.ops import USBatchNorm2d, width_key

ARCHS = {"us_resnet18": ("resnet18", False), "us_resnet50": ("resnet50", False),
         "us_cifar_resnet18": ("resnet18", True), "us_mobilenetv2": ("mobilenet_v2", False)}


def _ours(arch: str, name: str) -> str:
    """Our name of a reference layer (MobileNetV2 renames its blocks)."""
    return us3l_names(arch).get(name, name)


def _rounding_matches(arch: str, width: float) -> bool:
    """Whether our slimmable model uses the reference's channel counts at ``width`` (the statistics of a
    calibration file are valid for exactly those channels)."""
    from us3l.models import build_us_model

    ours, cifar = ARCHS[arch]
    bns = {n: m for n, m in build_us_model(ours, 0, cifar).named_modules() if isinstance(m, USBatchNorm2d)}
    return all(bns[_ours(arch, name)].features_at(width) == channels_at(arch, name, o, r, width)
               for name, kind, o, _, _, r in arch_layers(arch) if kind != "conv")


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("track", [False, True], ids=["no-stats", "mixed-stats"])
def test_pretraining_file_imports_calibrated_at_no_width(arch, track):
    ckpt = pretrain_file(arch, bn_track_stats=track)
    report = LoadReport()
    state, meta = extract_backbone(ckpt, source="checkpoint.pth.tar", report=report)
    assert (meta["arch"], meta["cifar_stem"]) == ARCHS[arch] and meta["calibrated_widths"] == []
    src = {k[len("module.encoder_q."):]: v for k, v in ckpt["state_dict"].items()
           if k.startswith("module.encoder_q.") and not k.startswith("module.encoder_q.fc.")}
    params = {k: v for k, v in src.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    # the plain BN of MobileNetV2's last conv tracks statistics in pre-training too: mixed widths, dropped
    assert set(state) == {f"{_ours(arch, k.rsplit('.', 1)[0])}.{k.rsplit('.', 1)[1]}" for k in params}
    for k, v in params.items():
        assert torch.equal(state[f"{_ours(arch, k.rsplit('.', 1)[0])}.{k.rsplit('.', 1)[1]}"], v)
    dropped = {d.split(" ")[0] for d in report.dropped}
    heads = {k for k in ckpt["state_dict"] if not k.startswith("module.encoder_q.") or ".fc." in k}
    assert heads <= dropped  # projector, EMA encoder, predictors: every key listed
    assert any("EMA" in d for d in report.dropped) and any("predictor" in d for d in report.dropped)
    stats = {f"module.encoder_q.{k}" for k in src if k.endswith(("running_mean", "running_var"))}
    assert stats <= {d.split(" ")[0] for d in report.dropped if "mix all widths" in d}


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("width,ddp", [(0.5, False), (0.25, True), (1.0, False)])
def test_calibration_file_imports_statistics_of_its_width_only(arch, width, ddp, tmp_path):
    assert _rounding_matches(arch, width), f"{arch}: our channel counts at {width} differ from the reference's"
    ckpt = calibrated_file(arch, width, ddp=ddp)
    path = tmp_path / f"checkpoint_width_{width}.pth.tar"
    torch.save(ckpt, path)
    report = LoadReport()
    state, meta = load_backbone(str(path), report=report)
    assert meta["calibrated_widths"] == [width] and meta["arch"] == ARCHS[arch][0]
    assert any("encoder_q.fc.weight" in d for d in report.dropped)
    prefix = "module.encoder_q." if ddp else "encoder_q."
    for name, kind, o, _, _, r in arch_layers(arch):
        if kind == "conv":
            continue
        c = channels_at(arch, name, o, r, width)
        mean = state[f"{_ours(arch, name)}.running_mean" + ("" if width == 1.0 else f"_w{width_key(width)}")]
        assert torch.equal(mean, ckpt["state_dict"][f"{prefix}{name}.running_mean"][:c]), name
    if width < 1.0:  # the full-size buffers hold no statistics of 1.0: not imported as such
        assert not any(k.endswith(".running_mean") for k in state)


def test_calibration_width_comes_from_the_name_or_the_caller(tmp_path):
    torch.save(calibrated_file("us_resnet18", 0.5), tmp_path / "calibrated.pth.tar")
    with pytest.raises(CheckpointError, match="checkpoint_width_"):
        load_backbone(str(tmp_path / "calibrated.pth.tar"))
    assert load_backbone(str(tmp_path / "calibrated.pth.tar"), width=0.5)[1]["calibrated_widths"] == [0.5]


@pytest.mark.parametrize("arch", ["us_resnet18", "us_resnet50"])
def test_detection_file_is_a_fixed_width_backbone(arch, tmp_path):
    torch.save(detection_file(arch, 0.5), tmp_path / "checkpoint_width_0.5_for_detection.pth.tar")
    path = str(tmp_path / "checkpoint_width_0.5_for_detection.pth.tar")
    report = LoadReport()
    state, meta = load_backbone(path, report=report)
    assert meta["fixed_width"] == 0.5 and meta["calibrated_widths"] == [0.5] and meta["width_range"] == [0.5, 0.5]
    assert state["conv1.weight"].shape[0] == 32
    assert {d.split(" ")[0] for d in report.dropped} == {"fc.weight", "fc.bias"}
    with pytest.raises(CheckpointError, match="fixed-width"):
        build_model_from_checkpoint(path)
    # the file's width is found from the shapes as well as from the name
    torch.save(detection_file(arch, 0.25), tmp_path / "narrow.pth")
    assert load_backbone(str(tmp_path / "narrow.pth"))[1]["fixed_width"] == 0.25


@pytest.mark.parametrize("arch", ["us_resnet18", "us_cifar_resnet18", "us_mobilenetv2"])
def test_uncalibrated_widths_refuse_evaluation_including_full_width(arch, tmp_path):
    torch.save(pretrain_file(arch), tmp_path / "checkpoint.pth.tar")
    model, meta = build_model_from_checkpoint(str(tmp_path / "checkpoint.pth.tar"))
    size = 32 if ARCHS[arch][1] else 64
    x = torch.rand(2, 3, size, size)
    model.eval()
    for w in (1.0, 0.5):
        with us3l.width(model, w), pytest.raises(us3l.UncalibratedWidthError, match="calibrat"):
            model(x)
    with pytest.raises(us3l.UncalibratedWidthError, match="calibrat"):
        us3l.export_static(model, 1.0)
    us3l.calibrate_bn(model, [x], 1.0)  # calibrating 1.0 lifts the refusal
    model.eval()
    assert torch.isfinite(model(x)).all() and us3l.calibrated_widths(model) == [1.0]


def test_width_calibrated_elsewhere_is_refused_with_a_hint(tmp_path):
    torch.save(calibrated_file("us_resnet50", 0.5), tmp_path / "checkpoint_width_0.5.pth.tar")
    state, meta = load_backbone(str(tmp_path / "checkpoint_width_0.5.pth.tar"))
    from us3l.models import build_static_model

    for w in (0.25, 1.0):
        own = build_static_model("resnet50", w).state_dict()
        with pytest.raises(us3l.UncalibratedWidthError, match=r"Calibrate that width \(tools/calibrate_bn.py\)"):
            fit_backbone(state, meta, own, width=w)
    fitted, report = fit_backbone(state, meta, build_static_model("resnet50", 0.5).state_dict(), width=0.5)
    assert report.ok and report.sliced
    fitted, report = fit_backbone(state, meta, build_static_model("resnet50", 0.25).state_dict(), width=0.25,
                                  bn_stats="reset")
    assert report.ok and not fitted["layer1.0.bn1.running_mean"].any()


def test_per_width_files_combine_into_one_checkpoint(tmp_path):
    paths = []
    for w in (0.25, 0.5, 1.0):
        paths.append(str(tmp_path / f"checkpoint_width_{w}.pth.tar"))
        torch.save(calibrated_file("us_resnet18", w, ddp=w == 0.5), paths[-1])
    state, meta = combine_calibrated(paths)
    assert meta["calibrated_widths"] == [0.25, 0.5, 1.0]
    for p, w in zip(paths, (0.25, 0.5, 1.0)):
        single, _ = load_backbone(p)
        suffix = "" if w == 1.0 else f"_w{width_key(w)}"
        assert torch.equal(state[f"layer3.1.bn2.running_var{suffix}"], single[f"layer3.1.bn2.running_var{suffix}"])
    torch.save(calibrated_file("us_resnet18", 0.75, seed=1), tmp_path / "checkpoint_width_0.75.pth.tar")
    with pytest.raises(CheckpointError, match="other weights"):
        combine_calibrated(paths + [str(tmp_path / "checkpoint_width_0.75.pth.tar")])
    with pytest.raises(CheckpointError, match="again"):
        combine_calibrated(paths[:2] + paths[1:2])


def test_tools_calibrate_and_combine_reference_files(tiny_cls, tmp_path, capsys):
    from tools_loader import load_tool

    torch.save(pretrain_file("us_resnet18"), tmp_path / "checkpoint.pth.tar")
    rc = load_tool("calibrate_bn").main([str(tmp_path / "checkpoint.pth.tar"), str(tmp_path / "cal.pth"),
                                         "--widths", "0.5", "--data-root", tiny_cls["root"], "--num-batches", "2",
                                         "--batch-size", "4", "--image-size", "32"])
    out = capsys.readouterr().out
    assert rc == 0 and "calibrated widths none" in out and "dropped: module.encoder_k." in out
    assert load_backbone(str(tmp_path / "cal.pth"))[1]["calibrated_widths"] == [0.5]
    for w in (0.25, 0.5):
        torch.save(calibrated_file("us_resnet18", w), tmp_path / f"checkpoint_width_{w}.pth.tar")
    rc = load_tool("combine_calibrated").main([str(tmp_path / "checkpoint_width_0.25.pth.tar"),
                                               str(tmp_path / "checkpoint_width_0.5.pth.tar"), str(tmp_path / "c.pth")])
    assert rc == 0 and load_backbone(str(tmp_path / "c.pth"))[1]["calibrated_widths"] == [0.25, 0.5]


def test_converting_imports_no_framework(tmp_path):
    """The converters write Detectron2 / MMDetection files on a machine that has neither framework loaded."""
    import subprocess
    import sys

    torch.save(pretrain_file("us_resnet18"), tmp_path / "checkpoint.pth.tar")
    code = ("import sys; sys.path.insert(0, 'tests'); from tools_loader import load_tool\n"
            f"src = {str(tmp_path / 'checkpoint.pth.tar')!r}\n"
            f"assert load_tool('convert_pretrain_to_d2').main([src, {str(tmp_path / 'a.pkl')!r}]) == 0\n"
            f"assert load_tool('convert_pretrain_to_mmdet').main([src, {str(tmp_path / 'a.pth')!r}]) == 0\n"
            "bad = [m for m in ('detectron2', 'mmdet', 'mmengine', 'mmcv') if m in sys.modules]\n"
            "assert not bad, bad\n")
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=root))
    assert out.returncode == 0, out.stderr
    assert "dropped: module.encoder_k." in out.stdout and "calibrated widths none" in out.stdout
