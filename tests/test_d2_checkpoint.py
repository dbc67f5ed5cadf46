"""Converter and loader: one full-width US3L file -> Detectron2 .pkl -> any width, nothing silently skipped."""
import os
import pickle
import subprocess
import sys

import detectron2  # noqa: E402,F401
import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from reference_layout import pretrain_file  # noqa: E402
from tools_loader import load_tool  # noqa: E402

import us3l  # noqa: E402
from us3l.checkpoint import PRETRAIN_FORMAT, CheckpointError, atomic_save  # noqa: E402
from us3l.checkpoint.d2_format import convert_backbone_to_d2 as convert  # noqa: E402
from us3l.checkpoint.keymaps import d2_to_tv, tv_to_d2  # noqa: E402
from us3l.checkpoint.model_io import save_model_backbone  # noqa: E402
from us3l.d2 import META_KEY, US3LCheckpointer, load_config, read_pkl  # noqa: E402
from us3l.models import us_resnet18, us_resnet50  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONVERTER = os.path.join(ROOT, "tools", "convert_pretrain_to_d2.py")
FPN_CPU = os.path.join(ROOT, "projects", "detection", "configs", "faster_rcnn_US-R50_FPN_1x_cpu.yaml")
C4_CPU = os.path.join(ROOT, "projects", "detection", "configs", "faster_rcnn_US-R50_C4_1x_cpu.yaml")
CALIBRATED = (0.35, 0.5)
converter_main = load_tool("convert_pretrain_to_d2").main


def _pretrained(model):
    """Non-trivial BN affine/statistics (a fresh model's 1/0 would hide a wrong mapping), then calibration."""
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    batches = [torch.rand(4, 3, 64, 64) for _ in range(2)]
    for w in (*CALIBRATED, 1.0):
        us3l.calibrate_bn(model, batches, w)
    return model.eval()


@pytest.fixture(scope="module")
def r50(tmp_path_factory):
    folder = tmp_path_factory.mktemp("d2ckpt")
    model = _pretrained(us_resnet50(num_classes=0))
    path = str(folder / "us3l_r50.pth")
    save_model_backbone(model, path)
    out = subprocess.run([sys.executable, CONVERTER, path, str(folder / "us3l_r50.pkl")], capture_output=True,
                         text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return {"model": model, "pth": path, "pkl": str(folder / "us3l_r50.pkl"), "stdout": out.stdout,
            "state": model.state_dict(), "folder": folder}


def detector(config, width, *opts):
    cfg = load_config(config, ["MODEL.US3L.WIDTH_MULT", width, *opts])
    return cfg, build_model(cfg).eval()


def trunk_source_name(d2_name):
    """torchvision name of a model key (``backbone.bottom_up.res2.0.conv1.weight`` -> ``layer1.0.conv1.weight``)."""
    for prefix in ("backbone.bottom_up.", "backbone.", "roi_heads."):
        if d2_name.startswith(prefix) and d2_to_tv(d2_name[len(prefix):]):
            return d2_to_tv(d2_name[len(prefix):])
    return None


def test_converter_writes_detectron2_pkl_with_per_width_stats(r50):
    assert "converted" in r50["stdout"] and "resnet50" in r50["stdout"]
    data = read_pkl(r50["pkl"])
    assert set(data) == {"model", "__author__", "matching_heuristics", META_KEY}
    assert data["__author__"] != "Caffe2" and data["matching_heuristics"] is True
    assert data[META_KEY]["arch"] == "resnet50" and data[META_KEY]["calibrated_widths"] == [*CALIBRATED, 1.0]
    assert all(isinstance(v, np.ndarray) for v in data["model"].values())
    src = r50["state"]
    np.testing.assert_array_equal(data["model"]["res5.2.conv3.weight"], src["layer4.2.conv3.weight"].numpy())
    np.testing.assert_array_equal(data["model"]["res3.0.shortcut.norm.running_mean_w0350"],
                                  src["layer2.0.downsample.1.running_mean_w0350"].numpy())
    # every source tensor is carried, under a Detectron2 name
    assert len(data["model"]) == len(src)


def test_pretrain_and_reference_formats_convert(r50, tmp_path):
    src, meta = r50["state"], {"arch": "resnet50", "cifar_stem": False, "width_range": [0.25, 1.0],
                               "calibrated_widths": list(CALIBRATED)}
    atomic_save({"format": PRETRAIN_FORMAT, "meta": meta, "model": {f"backbone.{k}": v for k, v in src.items()}},
                str(tmp_path / "pretrain.pth"))
    ours = read_pkl(r50["pkl"])["model"]
    payload = convert(str(tmp_path / "pretrain.pth"), str(tmp_path / "pretrain.pkl"))
    expected = ours  # 1.0 is not listed as calibrated: its buffers travel, refused by the loader (below)
    assert set(payload["model"]) == set(expected) and payload[META_KEY]["calibrated_widths"] == list(CALIBRATED)
    for k, v in expected.items():
        np.testing.assert_array_equal(payload["model"][k], v)
    # the reference code's BYOL checkpoint (layout from tests/reference_layout.py): the online encoder only
    ref = pretrain_file("us_resnet50")
    torch.save(ref, str(tmp_path / "checkpoint.pth.tar"))
    payload = convert(str(tmp_path / "checkpoint.pth.tar"), str(tmp_path / "reference.pkl"))
    enc = {k[len("module.encoder_q."):]: v for k, v in ref["state_dict"].items()
           if k.startswith("module.encoder_q.") and ".fc." not in k}
    assert set(payload["model"]) == {tv_to_d2(k) for k in enc} and payload[META_KEY]["calibrated_widths"] == []
    for k, v in enc.items():
        np.testing.assert_array_equal(payload["model"][tv_to_d2(k)], v.numpy())


@pytest.mark.parametrize("width", [0.35, 1.0])
def test_fpn_load_is_complete_sliced_and_equal_to_the_slimmable_model(r50, width):
    cfg, model = detector(FPN_CPU, width)
    ck = US3LCheckpointer(model, cfg=cfg)
    ck.load(r50["pkl"])
    report = ck.last_report
    assert report.ok and not report.missing and not report.unexpected and not report.mismatched
    trunk = {k: v for k, v in model.state_dict().items() if k.startswith("backbone.bottom_up.")}
    assert len(report.loaded) == len(trunk) and (width == 1.0) == (not report.sliced)
    src = r50["state"]
    for k, v in trunk.items():
        tv = trunk_source_name(k)
        if tv.endswith(("running_mean", "running_var")) and width < 1.0:
            tv = f"{tv}_w{us3l.ops.width_key(width)}"  # the statistics calibrated for this width
        expected = src[tv][tuple(slice(0, n) for n in v.shape)]
        assert torch.equal(v, expected), k
    slim = r50["model"]
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad(), us3l.width(slim, width):
        ref = slim.forward_stages(x)
        out = model.backbone.bottom_up(x)
    for i, r in enumerate(ref):
        torch.testing.assert_close(out[f"res{i + 2}"], r, rtol=1e-4, atol=1e-5)


def test_c4_load_places_res5_in_roi_heads(r50):
    cfg, model = detector(C4_CPU, 0.5)
    ck = US3LCheckpointer(model, cfg=cfg)
    ck.load(r50["pkl"])
    assert ck.last_report.ok
    res5 = [k for k in ck.last_report.loaded if k.startswith("roi_heads.res5.")]
    assert len(res5) == len([k for k in r50["state"] if k.startswith("layer4.") and "_w0" not in k])
    w = model.state_dict()["roi_heads.res5.0.conv2.weight"]
    assert torch.equal(w, r50["state"]["layer4.0.conv2.weight"][: w.shape[0], : w.shape[1]])


@pytest.mark.parametrize("norm", ["FrozenBN", "GN", "SyncBN"])
def test_other_norms_load_without_bad_keys(r50, norm):
    cfg, model = detector(FPN_CPU, 0.5, "MODEL.RESNETS.NORM", norm, "MODEL.BACKBONE.FREEZE_AT", 2)
    ck = US3LCheckpointer(model, cfg=cfg)
    ck.load(r50["pkl"])
    assert ck.last_report.ok
    norm_state = model.state_dict()
    if norm != "GN":
        expected = r50["state"]["layer1.0.bn1.running_var_w0500"]
        assert torch.equal(norm_state["backbone.bottom_up.res2.0.conv1.norm.running_var"], expected)


def test_bn_stats_policy(r50):
    cfg, model = detector(FPN_CPU, 0.6)
    with pytest.raises(us3l.UncalibratedWidthError, match="calibrated widths"):
        US3LCheckpointer(model, cfg=cfg).load(r50["pkl"])
    cfg, model = detector(FPN_CPU, 0.6, "MODEL.US3L.BN_STATS", "reset")
    US3LCheckpointer(model, cfg=cfg).load(r50["pkl"])
    mean = model.state_dict()["backbone.bottom_up.res4.1.conv2.norm.running_mean"]
    assert mean.shape == (us3l.active_channels(256, 0.6),) and not mean.any()


def test_width_outside_pretrained_range_is_rejected(r50):
    cfg, model = detector(FPN_CPU, 0.2, "MODEL.US3L.WIDTH_RANGE", [0.1, 1.0])
    with pytest.raises(CheckpointError, match=r"outside the width range \[0.25, 1.0\]"):
        US3LCheckpointer(model, cfg=cfg).load(r50["pkl"])


def test_checkpoint_of_another_depth_is_rejected(tmp_path):
    model18 = us_resnet18(num_classes=0)
    save_model_backbone(model18, str(tmp_path / "r18.pth"))
    convert(str(tmp_path / "r18.pth"), str(tmp_path / "r18.pkl"))
    cfg, model = detector(FPN_CPU, 1.0)
    with pytest.raises(CheckpointError, match="resnet18 backbone but the model is resnet50"):
        US3LCheckpointer(model, cfg=cfg).load(str(tmp_path / "r18.pkl"))


def test_stride_in_1x1_is_rejected(r50):
    cfg, model = detector(FPN_CPU, 0.5, "MODEL.RESNETS.STRIDE_IN_1X1", True)
    with pytest.raises(CheckpointError, match="STRIDE_IN_1X1"):
        US3LCheckpointer(model, cfg=cfg).load(r50["pkl"])


def test_backbone_files_load_directly_and_torch_files_named_pkl_fail(r50, tmp_path, capsys):
    cfg, model = detector(FPN_CPU, 0.5)
    ck = US3LCheckpointer(model, cfg=cfg)
    ck.load(r50["pth"])  # our .pth as MODEL.WEIGHTS: converted in memory
    assert ck.last_report.ok and ck.last_report.sliced
    torch.save(pretrain_file("us_resnet50"), str(tmp_path / "checkpoint_0199.pth.tar"))
    with pytest.raises(us3l.UncalibratedWidthError, match="Calibrate that width"):  # no width calibrated
        US3LCheckpointer(model, cfg=cfg).load(str(tmp_path / "checkpoint_0199.pth.tar"))
    renamed = tmp_path / "renamed.pkl"
    renamed.write_bytes(open(r50["pth"], "rb").read())
    with pytest.raises(CheckpointError, match="torch checkpoint"):  # a torch file named .pkl
        US3LCheckpointer(model, cfg=cfg).load(str(renamed))
    assert converter_main([r50["pth"], str(tmp_path / "out.pth")]) == 2
    assert "must end in .pkl" in capsys.readouterr().err
    assert not (tmp_path / "out.pth").exists()


def test_converter_fails_on_unmappable_or_cifar_backbones(r50, tmp_path):
    state = dict(r50["state"], **{"layer1.0.se.fc.weight": torch.zeros(4, 4)})
    torch.save({"format": "us3l.backbone/1", "meta": {"arch": "resnet50", "width_range": [0.25, 1.0]},
                "state_dict": state}, str(tmp_path / "extra.pth"))
    with pytest.raises(CheckpointError, match="cannot be mapped.*layer1.0.se.fc.weight"):
        convert(str(tmp_path / "extra.pth"), str(tmp_path / "extra.pkl"))
    save_model_backbone(us_resnet18(num_classes=0, cifar_stem=True), str(tmp_path / "cifar.pth"))
    with pytest.raises(CheckpointError, match="CIFAR stem"):
        convert(str(tmp_path / "cifar.pth"), str(tmp_path / "cifar.pkl"))
    assert not os.path.exists(tmp_path / "extra.pkl") and not os.path.exists(tmp_path / "cifar.pkl")


def test_pkl_without_us3l_metadata_loads_only_at_its_own_shapes(r50, tmp_path):
    """A plain Detectron2 backbone .pkl (e.g. MoCo's converter output) goes through Detectron2's name matching,
    then must fit the trunk exactly: FPN/heads may be missing, a narrower model is an error, not a warning."""
    data = read_pkl(r50["pkl"])
    data.pop(META_KEY)
    data["model"] = {k: v for k, v in data["model"].items() if "_w0" not in k}
    with open(tmp_path / "plain.pkl", "wb") as f:
        pickle.dump(data, f)
    cfg, model = detector(FPN_CPU, 1.0)
    ck = US3LCheckpointer(model, cfg=cfg)
    ck.load(str(tmp_path / "plain.pkl"))
    assert ck.last_report.ok and len(ck.last_report.loaded) == len(data["model"])
    cfg, narrow = detector(FPN_CPU, 0.5)
    with pytest.raises(CheckpointError, match="shape-mismatched"):
        US3LCheckpointer(narrow, cfg=cfg).load(str(tmp_path / "plain.pkl"))


def test_detectron2_checkpoint_of_another_width_fails_loudly(tmp_path):
    """Stock Detectron2 skips a wrongly-shaped tensor with a warning: the US3L backbone stops that load (naming
    our checkpointer), and ours refuses it saying why."""
    cfg, wide = detector(FPN_CPU, 0.5, "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64)
    torch.save({"model": wide.state_dict()}, str(tmp_path / "model_w050.pth"))
    cfg, narrow = detector(FPN_CPU, 0.35, "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64)
    stock = DetectionCheckpointer(narrow)
    with pytest.raises(CheckpointError, match=r"100 missing.*US3LCheckpointer"):  # Detectron2 alone: warnings
        stock.load(str(tmp_path / "model_w050.pth"))
    with pytest.raises(CheckpointError, match="saved at another width"):
        US3LCheckpointer(narrow, cfg=cfg).load(str(tmp_path / "model_w050.pth"))
    cfg, same = detector(FPN_CPU, 0.5, "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64)
    ck = US3LCheckpointer(same, cfg=cfg)
    ck.load(str(tmp_path / "model_w050.pth"))
    assert ck.last_report.ok and not ck.last_report.sliced
    for k, v in same.state_dict().items():
        assert torch.equal(v, wide.state_dict()[k]), k
