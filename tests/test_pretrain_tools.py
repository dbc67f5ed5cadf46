"""tools/calibrate_bn.py and tools/eval_ssl.py on pre-training and reference-code checkpoints."""
import importlib.util
import json
import os

import pytest
import torch
from pretrain_helpers import TINY, tiny_overrides

from us3l.checkpoint import atomic_save, load_backbone
from us3l.engine.config import config_from_dict
from us3l.ssl.methods import build_method

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tool(name):
    import sys
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "tools", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


@pytest.fixture(scope="module")
def pretrain_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    cfg = config_from_dict({"model": {"cifar_stem": False}, "method": {"proj_hidden": 32, "proj_dim": 16,
                                                                       "pred_hidden": 16}})
    m = build_method(cfg)
    path = str(tmp_path_factory.mktemp("ck") / "final.pth")
    atomic_save({"format": "us3l.pretrain/1", "model": m.online.state_dict(),
                 "meta": {"arch": "resnet18", "cifar_stem": False, "width_range": [0.25, 1.0], "calibrated_widths": [],
                          "method": "us3l", "config": cfg.to_dict()}}, path)
    return path, m


def test_calibrate_tool_imagefolder_and_coco_images(pretrain_ckpt, tiny_cls, tiny_coco, tmp_path):
    src, m = pretrain_ckpt
    main = tool("calibrate_bn")
    for root in (tiny_cls["root"], tiny_coco["root"]):
        dst = tmp_path / f"cal_{os.path.basename(root)}.pth"
        assert main([src, str(dst), "--widths", "1.0", "0.5", "0.25", "--data-root", root, "--num-batches", "2",
                     "--batch-size", "4", "--image-size", "16"]) == 0
        ck = torch.load(str(dst), map_location="cpu", weights_only=True)
        assert ck["format"] == "us3l.backbone/1" and ck["meta"]["calibrated_widths"] == [0.25, 0.5, 1.0]
        sd = ck["state_dict"]
        assert sd["layer4.1.bn2.running_mean_w0250"].shape == (128,)
        assert not torch.equal(sd["bn1.running_var"], torch.ones(64))  # statistics really estimated
        assert torch.equal(sd["layer1.0.conv1.weight"], m.online.backbone.layer1[0].conv1.weight)
    # errors: missing data root, SRC == DST
    assert main([src, str(tmp_path / "x.pth"), "--widths", "0.5", "--data-root", str(tmp_path / "nope"),
                 "--num-batches", "1"]) == 2
    assert main([src, src, "--widths", "0.5", "--data-root", tiny_cls["root"], "--num-batches", "1"]) == 2


def test_reference_code_checkpoint_is_read(tiny_cls, tmp_path):
    from reference_layout import pretrain_file  # the reference's BYOL file, from an independent description

    ref = pretrain_file("us_resnet18")
    src = tmp_path / "ref.pth.tar"
    torch.save(ref, str(src))
    state, meta = load_backbone(str(src))
    assert meta["arch"] == "resnet18" and meta["calibrated_widths"] == []
    assert torch.equal(state["conv1.weight"], ref["state_dict"]["module.encoder_q.conv1.weight"])
    dst = tmp_path / "ref_cal.pth"
    assert tool("calibrate_bn")([str(src), str(dst), "--widths", "0.75", "--data-root", tiny_cls["root"],
                                 "--num-batches", "1", "--batch-size", "4", "--image-size", "16"]) == 0
    assert load_backbone(str(dst))[1]["calibrated_widths"] == [0.75]


def test_eval_ssl_writes_json_and_markdown(pretrain_ckpt, tiny_cls, tmp_path):
    src, _ = pretrain_ckpt
    out = tmp_path / "eval.json"
    assert tool("eval_ssl")([src, "--widths", "1.0", "0.25", "--dataset", "imagefolder", "--data-root",
                             tiny_cls["root"], "--image-size", "16", "--recipe", "cifar", "--calib-batches", "2",
                             "--batch-size", "8", "--probe-epochs", "5", "--knn-k", "5", "--output", str(out)]) == 0
    res = json.loads(out.read_text())
    assert [r["width"] for r in res["rows"]] == [1.0, 0.25]
    assert [r["feature_dim"] for r in res["rows"]] == [512, 128]  # the width was applied
    assert all(0.0 <= r["knn_top1"] <= 100.0 and 0 <= r["linear_top1"] <= 100 for r in res["rows"])
    assert res["chance_top1"] == 25.0
    assert "| 0.25x | 128 |" in (tmp_path / "eval.md").read_text()


def test_ssl_table_summarises_real_runs(tiny_cls, tmp_path):
    """pretrain -> eval_ssl -> ssl_table on two real (tiny) runs; the table reads the trainer's own log."""
    from us3l.engine.config import load_config
    from us3l.engine.trainer import pretrain

    widths = [str(w) for w in (1.0, 0.75, 0.5, 0.25)]
    for method in ("simsiam_naive", "us3l"):
        cfg = load_config(TINY, tiny_overrides(tiny_cls["root"], f"method.name={method}", "train.iterations=3",
                                               "train.log_every=1", "train.checkpoint_every=0"))
        pretrain(cfg, str(tmp_path / method))
        assert tool("eval_ssl")([str(tmp_path / method / "final.pth"), "--widths", *widths, "--dataset",
                                 "imagefolder", "--data-root", tiny_cls["root"], "--image-size", "16", "--recipe",
                                 "cifar", "--calib-batches", "1", "--batch-size", "16", "--probe-epochs", "2",
                                 "--knn-k", "3", "--output", str(tmp_path / f"{method}.eval.json")]) == 0
    assert tool("ssl_table")([str(tmp_path), "simsiam_naive", "us3l", "not_run"]) == 0
    table = (tmp_path / "table1.md").read_text().splitlines()
    assert len(table) == 5 and table[-1].startswith("| not_run | (missing)")
    naive = json.loads((tmp_path / "simsiam_naive.eval.json").read_text())["rows"]
    cells = [c.strip() for c in table[2].split("|")[1:-1]]
    assert cells[0] == "simsiam_naive" and cells[1] == f"{naive[0]['knn_top1']:.1f} / {naive[0]['linear_top1']:.1f}"
    assert cells[6] != "-" and cells[7] != "-"  # collapse metric read from the 3 logged iterations
    assert (tmp_path / "table1.png").stat().st_size > 0
    assert tool("ssl_table")([str(tmp_path / "nowhere"), "us3l"]) == 2
