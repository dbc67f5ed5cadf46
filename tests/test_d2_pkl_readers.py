"""The tools that read a backbone read Detectron2 ``.pkl`` files too, whatever the pickle protocol (2, 4 = Python 3's
default, 5 = what our converter writes): export_static, calibrate_bn's loader, convert_pretrain_to_mmdet. The
stock-format file is built here from Detectron2's own published naming (stem.conv1, res2..res5 with conv1..3,
conv*.norm, shortcut), written out in this test, not from the project's key maps."""
import os
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision

import us3l
from us3l.checkpoint import CheckpointError
from us3l.checkpoint.io import load_backbone
from us3l.checkpoint.model_io import save_model_backbone
from us3l.models import us_resnet18

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tool(name, *args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", name), *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=600)


def _d2_name(tv: str) -> str:
    """Detectron2's ResNet trunk name of a torchvision parameter, from Detectron2's documented layout."""
    if tv == "conv1.weight":
        return "stem.conv1.weight"
    tv = re.sub(r"^bn1\.", "stem.conv1.norm.", tv)
    m = re.match(r"^layer(\d)\.(\d+)\.(.*)$", tv)
    if not m:
        return tv
    rest = m.group(3)
    rest = re.sub(r"^bn(\d)\.", r"conv\1.norm.", rest)
    rest = rest.replace("downsample.0.", "shortcut.").replace("downsample.1.", "shortcut.norm.")
    return f"res{int(m.group(1)) + 1}.{m.group(2)}.{rest}"


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pkl")
    torch.manual_seed(0)
    net = us_resnet18(num_classes=0)
    for w in (1.0, 0.5):
        us3l.calibrate_bn(net, [torch.rand(4, 3, 64, 64) for _ in range(2)], w)
    save_model_backbone(net, str(folder / "r18.pth"))
    run = _tool("convert_pretrain_to_d2.py", folder / "r18.pth", folder / "r18.pkl")
    assert run.returncode == 0, run.stderr[-2000:]
    return folder


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_our_pkl_reads_back_as_the_backbone_it_came_from(ours, protocol, tmp_path):
    with open(ours / "r18.pkl", "rb") as f:
        payload = pickle.load(f)
    path = tmp_path / f"p{protocol}.pkl"
    with open(path, "wb") as f:
        pickle.dump(payload, f, protocol=protocol)
    state, meta = load_backbone(str(path))
    ref, ref_meta = load_backbone(str(ours / "r18.pth"))
    assert set(state) == set(ref) and all(torch.equal(state[k], ref[k]) for k in ref)
    assert meta["calibrated_widths"] == ref_meta["calibrated_widths"] == [0.5, 1.0]
    assert meta["arch"] == "resnet18"


def test_export_static_and_mmdet_conversion_take_the_pkl(ours, tmp_path):
    for src in ("r18.pkl", "r18.pth"):
        run = _tool("export_static.py", ours / src, tmp_path / f"{src}.static.pth", "--width", "0.5")
        assert run.returncode == 0, run.stderr[-2000:]
    a = torch.load(tmp_path / "r18.pkl.static.pth", weights_only=True)
    b = torch.load(tmp_path / "r18.pth.static.pth", weights_only=True)
    a, b = (x.get("state_dict", x) for x in (a, b))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in b)
    run = _tool("convert_pretrain_to_mmdet.py", ours / "r18.pkl", tmp_path / "mm.pth")
    assert run.returncode == 0, run.stderr[-2000:]
    mm = torch.load(tmp_path / "mm.pth", weights_only=True)["state_dict"]
    assert torch.equal(mm["backbone.layer2.0.downsample.0.weight"],
                       load_backbone(str(ours / "r18.pth"))[0]["layer2.0.downsample.0.weight"])


def test_a_stock_detectron2_style_pkl_of_a_torchvision_resnet(tmp_path):
    """A file as Detectron2's converters write one: numpy arrays, trunk names, no __us3l__ meta; the classifier of
    the source network not included. Its statistics are a normally trained network's: valid at full width."""
    torch.manual_seed(1)
    tv = torchvision.models.resnet18()
    model = {_d2_name(k): v.numpy() for k, v in tv.state_dict().items()
             if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    path = tmp_path / "R-18.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": model, "__author__": "torchvision", "matching_heuristics": True}, f, protocol=4)
    state, meta = load_backbone(str(path))
    assert torch.equal(state["layer3.1.conv2.weight"], tv.layer3[1].conv2.weight.detach())
    assert torch.equal(state["layer4.0.downsample.1.running_var"], tv.layer4[0].downsample[1].running_var)
    assert meta["arch"] == "resnet18" and meta["calibrated_widths"] == [1.0]
    # a detector's .pkl: the trunk under backbone.bottom_up., the rest listed as left out
    det = {f"backbone.bottom_up.{k}": v for k, v in model.items()}
    det["roi_heads.box_predictor.cls_score.weight"] = np.zeros((5, 8), np.float32)
    with open(tmp_path / "det.pkl", "wb") as f:
        pickle.dump({"model": det}, f, protocol=4)
    from us3l.checkpoint.report import LoadReport

    report = LoadReport()
    state2, _ = load_backbone(str(tmp_path / "det.pkl"), report=report)
    assert set(state2) == set(state) and any("roi_heads.box_predictor" in d for d in report.dropped)
    # caffe2-era names are not guessed at
    with open(tmp_path / "caffe2.pkl", "wb") as f:
        pickle.dump({"model": {"res2_0_branch2a_w": np.zeros((64, 64, 1, 1), np.float32)}}, f, protocol=4)
    with pytest.raises(CheckpointError, match="cannot be mapped"):
        load_backbone(str(tmp_path / "caffe2.pkl"))
