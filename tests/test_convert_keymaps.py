"""Name maps and file conversion between our checkpoints, Detectron2 and MMDetection (no framework needed)."""
import pickle

import pytest
import torch
from ckpt_helpers import us_r50_checkpoint
from reference_layout import channels_at, resnet_layers
from tools_loader import load_tool

from us3l.checkpoint import CheckpointError, load_backbone
from us3l.checkpoint.d2_format import read_d2_checkpoint
from us3l.checkpoint.frameworks import convert_d2_to_mmdet, convert_mmdet_to_d2, d2_to_mmdet_state, mmdet_to_d2_state
from us3l.checkpoint.keymaps import d2_to_tv, detect_d2_layout, permute_anchors, tv_to_d2
from us3l.checkpoint.mmdet_format import convert_backbone_to_mmdet, read_mmdet_checkpoint


@pytest.fixture(scope="module")
def d2_trunk():
    """A ResNet-50 trunk at width 0.5 from an independent description of torchvision's layout."""
    g, tv = torch.Generator().manual_seed(0), {}
    for name, kind, o, i, k in resnet_layers(50):
        c = channels_at("r50", name, o, 1, 0.5)
        if kind == "conv":
            tv[f"{name}.weight"] = torch.randn(c, 3 if name == "conv1" else channels_at("r50", name, i, 1, 0.5), k, k,
                                               generator=g)
        else:
            for leaf in ("weight", "bias", "running_mean", "running_var"):
                tv[f"{name}.{leaf}"] = torch.rand(c, generator=g)
            tv[f"{name}.num_batches_tracked"] = torch.tensor(0)
    return {tv_to_d2(k): v for k, v in tv.items()}


def _fake_fpn_detector(trunk):
    g = torch.Generator().manual_seed(0)
    state = {"backbone.bottom_up." + k: v for k, v in trunk.items()}
    for s, c in zip(range(2, 6), (128, 256, 512, 1024)):
        for kind, cin, k in (("lateral", c, 1), ("output", 256, 3)):
            state[f"backbone.fpn_{kind}{s}.weight"] = torch.randn(256, cin, k, k, generator=g)
            state[f"backbone.fpn_{kind}{s}.norm.weight"] = torch.randn(256, generator=g)
            state[f"backbone.fpn_{kind}{s}.norm.running_mean"] = torch.randn(256, generator=g)
    heads = {"proposal_generator.rpn_head.conv.weight": (256, 256, 3, 3),
             "proposal_generator.rpn_head.objectness_logits.bias": (3,),
             "proposal_generator.rpn_head.anchor_deltas.weight": (12, 256, 1, 1),
             "roi_heads.box_head.fc1.weight": (1024, 256 * 49), "roi_heads.box_head.fc2.bias": (1024,),
             "roi_heads.box_predictor.cls_score.weight": (5, 1024),
             "roi_heads.box_predictor.bbox_pred.weight": (16, 1024),
             "roi_heads.mask_head.mask_fcn4.weight": (256, 256, 3, 3),
             "roi_heads.mask_head.deconv.weight": (256, 256, 2, 2),
             "roi_heads.mask_head.predictor.bias": (4,)}
    state.update({k: torch.randn(*s, generator=g) for k, s in heads.items()})
    return state


def test_trunk_names_round_trip_and_table(d2_trunk):
    assert d2_trunk["stem.conv1.weight"].shape[0] == 32
    assert "res5.0.shortcut.norm.running_var" in d2_trunk and "res2.2.conv3.norm.bias" in d2_trunk
    assert all(tv_to_d2(d2_to_tv(k)) == k for k in d2_trunk)
    assert detect_d2_layout(d2_trunk) == "trunk"


def test_fpn_detector_names_and_round_trip(d2_trunk):
    state = _fake_fpn_detector(d2_trunk)
    mm, conv = d2_to_mmdet_state(state)
    assert conv.layout == "fpn" and not conv.skipped
    # d2 names FPN levels by stage (2..5), mmdet by input index (0..3); a norm is mmdet's "bn"
    assert torch.equal(mm["neck.lateral_convs.0.conv.weight"], state["backbone.fpn_lateral2.weight"])
    assert torch.equal(mm["neck.fpn_convs.3.bn.running_mean"], state["backbone.fpn_output5.norm.running_mean"])
    assert torch.equal(mm["backbone.layer4.0.downsample.1.weight"],
                       state["backbone.bottom_up.res5.0.shortcut.norm.weight"])
    for d2, m in (("roi_heads.box_head.fc1.weight", "roi_head.bbox_head.shared_fcs.0.weight"),
                  ("roi_heads.box_predictor.cls_score.weight", "roi_head.bbox_head.fc_cls.weight"),
                  ("roi_heads.mask_head.mask_fcn4.weight", "roi_head.mask_head.convs.3.conv.weight"),
                  ("roi_heads.mask_head.deconv.weight", "roi_head.mask_head.upsample.weight"),
                  ("proposal_generator.rpn_head.anchor_deltas.weight", "rpn_head.rpn_reg.weight")):
        assert torch.equal(mm[m], state[d2]), d2  # one size per level: no anchor reordering
    back, _ = mmdet_to_d2_state(mm)
    assert list(back) == list(state)
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_c4_detector_res5_and_anchor_order(d2_trunk):
    state = {("roi_heads." + k if k.startswith("res5.") else "backbone." + k): v for k, v in d2_trunk.items()}
    cls = torch.arange(15.0)  # d2: anchor a = size * 3 + ratio
    state["proposal_generator.rpn_head.objectness_logits.bias"] = cls
    state["proposal_generator.rpn_head.anchor_deltas.bias"] = torch.arange(60.0)
    mm, conv = d2_to_mmdet_state(state)
    assert conv.layout == "c4" and any("5 sizes x 3 ratios" in n for n in conv.notes)
    assert "roi_head.shared_head.layer4.2.bn3.running_var" in mm
    assert not any(k.startswith("backbone.layer4") for k in mm)
    # mmdet: anchor a' = ratio * 5 + size
    expected = torch.tensor([s * 3 + r for r in range(3) for s in range(5)], dtype=torch.float)
    assert torch.equal(mm["rpn_head.rpn_cls.bias"], expected)
    reg = mm["rpn_head.rpn_reg.bias"].view(15, 4)
    assert torch.equal(reg[:, 0], expected * 4) and torch.equal(reg[:, 3], expected * 4 + 3)
    back, _ = mmdet_to_d2_state(mm)
    assert list(back) == list(state) and all(torch.equal(back[k], state[k]) for k in state)


def test_permute_anchors_is_inverted():
    t = torch.randn(60, 7)
    assert torch.equal(permute_anchors(permute_anchors(t, 5, 3, "mmdet"), 5, 3, "d2"), t)
    assert torch.equal(permute_anchors(t[:12], 1, 3, "mmdet"), t[:12])  # one size per level: same order


def test_unmapped_keys_fail(d2_trunk):
    state = _fake_fpn_detector(d2_trunk)
    with pytest.raises(CheckpointError, match="backbone keys have no counterpart"):
        d2_to_mmdet_state({**state, "backbone.bottom_up.res2.0.conv1.extra": torch.zeros(1)})
    heads = {**state, "roi_heads.box_head.0.fc1.weight": torch.zeros(2, 2)}  # a cascade stage
    with pytest.raises(CheckpointError, match="--skip-unmapped-heads"):
        d2_to_mmdet_state(heads)
    mm, conv = d2_to_mmdet_state(heads, skip_unmapped_heads=True)
    assert conv.skipped == ["roi_heads.box_head.0.fc1.weight"]
    with pytest.raises(CheckpointError, match="backbone keys"):
        mmdet_to_d2_state({"backbone.layer1.0.attn.weight": torch.zeros(1), "backbone.conv1.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="not a Detectron2 ResNet"):
        d2_to_mmdet_state({"encoder.weight": torch.zeros(1)})


def test_pretrain_to_mmdet_tool(tmp_path):
    src, dst = us_r50_checkpoint()[0], str(tmp_path / "mm.pth")
    meta = convert_backbone_to_mmdet(src, dst)
    assert meta["arch"] == "resnet50" and meta["calibrated_widths"] == [0.25, 0.5, 1.0]
    obj = torch.load(dst, weights_only=True)  # only tensors and plain metadata
    state, _ = load_backbone(src)
    assert set(obj["state_dict"]) == {"backbone." + k for k in state}
    assert all(torch.equal(obj["state_dict"]["backbone." + k], v) for k, v in state.items())
    assert "backbone.layer2.0.bn1.running_mean_w0500" in obj["state_dict"]


def test_d2_mmdet_tools_round_trip_files(tmp_path, d2_trunk):
    state = _fake_fpn_detector(d2_trunk)
    src = tmp_path / "d2.pkl"
    extras = {"__author__": "someone", "matching_heuristics": False}
    with open(src, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in state.items()}, **extras}, f)
    convert_d2_to_mmdet(str(src), str(tmp_path / "mm.pth"))
    convert_mmdet_to_d2(str(tmp_path / "mm.pth"), str(tmp_path / "back.pkl"))
    with open(tmp_path / "back.pkl", "rb") as f:
        back = pickle.load(f)
    assert {k: v for k, v in back.items() if k != "model"} == extras
    assert list(back["model"]) == list(state)
    for k, v in state.items():
        a = back["model"][k]
        assert a.dtype == v.numpy().dtype and a.tobytes() == v.numpy().tobytes(), k


def test_bad_files_give_clear_errors(tmp_path, capsys):
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"\x80\x04not a pickle at all")
    with pytest.raises(CheckpointError, match="cannot read .*bad.pkl as a pickle"):
        read_d2_checkpoint(str(bad))
    trunc = tmp_path / "trunc.pth"
    torch.save({"state_dict": {"backbone.conv1.weight": torch.zeros(3)}}, trunc)
    trunc.write_bytes(trunc.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="corrupt"):
        read_mmdet_checkpoint(str(trunc))
    with pytest.raises(CheckpointError, match="not found"):
        read_d2_checkpoint(str(tmp_path / "missing.pkl"))
    # the tool's main returns the exit code (`sys.exit(main())`): 2 = bad input, nothing written
    code = load_tool("convert_d2_to_mmdet").main([str(tmp_path / "missing.pkl"), str(tmp_path / "x.pth")])
    assert code == 2 and "not found" in capsys.readouterr().err and not (tmp_path / "x.pth").exists()
    with open(tmp_path / "arr.pkl", "wb") as f:
        pickle.dump({"model": {"stem.conv1.weight": "text"}}, f)
    with pytest.raises(CheckpointError, match="not a tensor"):
        read_d2_checkpoint(str(tmp_path / "arr.pkl"))
