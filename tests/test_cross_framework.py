"""A slimmable Mask R-CNN trained in one framework runs in the other with one command (issue 24).

``bench/cross_framework.py --quick`` as a user runs it: train in each framework (a few real steps), calibrate,
convert with ``--config``, evaluate the converted detector with the WRITTEN config in the other framework at three
widths, convert back. Then, in this process, the two detectors compute the same thing at every width: FPN
features, RPN outputs and box-head scores on the same input and the same RoIs (an undertrained detector's AP is
near zero, so AP alone could not tell a wrong conversion). Bad input: one ``error:`` line, exit 2, nothing
written.
"""
import json
import os
import subprocess
import sys

import detectron2  # noqa: F401
import mmcv.ops  # noqa: F401
import mmdet  # noqa: F401
import pytest
import torch
from ckpt_helpers import ROOT

import us3l
import us3l.d2
import us3l.mmdet

WIDTHS = (1.0, 0.5, 0.25)


@pytest.fixture(scope="module")
def crossed(tmp_path_factory):
    out = tmp_path_factory.mktemp("cross")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "cross_framework.py"), str(out), "--quick"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((out / "cross_framework.json").read_text())
    old = os.environ.get("US3L_DATASETS")
    os.environ["US3L_DATASETS"] = str(out / "datasets")
    us3l.d2.register_us3l_datasets(str(out / "datasets"))
    yield {r["source"]: r for r in doc["results"]}, out
    if old is None:
        os.environ.pop("US3L_DATASETS")
    else:
        os.environ["US3L_DATASETS"] = old


def test_both_directions_convert_evaluate_and_round_trip(crossed):
    results, _ = crossed
    assert sorted(results) == ["d2", "mmdet"]
    for r in results.values():
        assert r["round_trip_bit_identical"] and r["tensors"] > 300
        assert sorted(r["source_AP"]) == sorted(r["target_AP"]) == ["0.25", "0.5", "1"]
        for w in r["source_AP"]:  # AP of the converted detector, measured in the other framework
            for m in ("box_AP", "mask_AP"):  # (undertrained: near 0; equality is the next test's, parity the bench's)
                assert 0.0 <= r["target_AP"][w][m] <= 100.0, (r["source"], w, m)
        assert os.path.isfile(r["exported_in_target"])  # the converted slimmable detector exports in the target
        plain = r["plain"]  # the exported plain detector at 0.5, crossed with its exported config
        assert sorted(plain["source_AP"]) == sorted(plain["target_AP"]) == ["0.5"]
        assert os.path.isfile(plain["converted"]) and os.path.isfile(plain["written_config"])
    assert results["d2"]["written_config"].endswith(".py") and results["mmdet"]["written_config"].endswith(".yaml")


def _pair(result):
    """(Detectron2 model, MMDetection model) of one direction: the source and its converted twin."""
    from us3l.d2.detector_tools import load_slimmable_detector as load_d2
    from us3l.mmdet.slimmable_eval import load_slimmable_detector as load_mm

    source, converted = (result["config"], result["weights"]), (result["written_config"], result["converted"])
    d2_files, mm_files = (source, converted) if result["source"] == "d2" else (converted, source)
    d2, _ = load_d2(*d2_files)
    mm, _ = load_mm(*mm_files)
    return d2, mm


def _rois(n=12, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size * 0.6
    wh = 4 + torch.rand(n, 2, generator=g) * size * 0.4
    return torch.cat([xy, (xy + wh).clamp(max=size - 1)], dim=1)


@pytest.mark.parametrize("source", ["d2", "mmdet"])
def test_converted_detector_computes_the_same_at_every_width(crossed, source):
    from detectron2.structures import Boxes

    from us3l.d2.evaluation import prepare_for_width

    d2, mm = _pair(crossed[0][source])
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    boxes = _rois()
    for w in WIDTHS:
        prepare_for_width(d2, w)
        us3l.set_width(mm, w)
        with torch.no_grad():
            f_d2 = d2.backbone(x)
            f_mm = mm.neck(mm.backbone(x))
            for name, a in zip(["p2", "p3", "p4", "p5", "p6"], f_mm):
                assert a.shape == f_d2[name].shape and torch.allclose(a, f_d2[name], atol=1e-4), (w, name)
            levels = [f_d2[k] for k in ("p2", "p3", "p4", "p5", "p6")]
            obj_d2, delta_d2 = d2.proposal_generator.rpn_head(levels)
            obj_mm, delta_mm = mm.rpn_head(list(f_mm))
            for a, b in zip(obj_d2 + delta_d2, obj_mm + delta_mm):  # one anchor size per level: same order
                assert torch.allclose(a, b, atol=1e-4), w
            heads = d2.roi_heads
            pooled = heads.box_pooler([f_d2[k] for k in heads.box_in_features], [Boxes(boxes)])
            scores_d2, deltas_d2 = heads.box_predictor(heads.box_head(pooled))
            rois = torch.cat([torch.zeros(len(boxes), 1), boxes], dim=1)
            mm_roi = mm.roi_head
            feats = mm_roi.bbox_roi_extractor(f_mm[:mm_roi.bbox_roi_extractor.num_inputs], rois)
            scores_mm, deltas_mm = mm_roi.bbox_head(feats)
            assert torch.allclose(scores_d2, scores_mm, atol=1e-4) and torch.allclose(deltas_d2, deltas_mm, atol=1e-4)


def _convert(tool, *args):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", tool), *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_a_config_that_disagrees_with_the_checkpoint_is_one_error_and_writes_nothing(crossed, tmp_path):
    results, _ = crossed
    d2 = results["d2"]
    text = open(d2["config"]).read().replace("NUM_CLASSES: 4", "NUM_CLASSES: 7")
    assert "NUM_CLASSES: 7" in text and "us3l_shapes_val" in text
    for name, content, says in (("vs_test_set", text, "has 4 classes"),  # the config contradicts its test set
                                ("vs_checkpoint", text.replace("us3l_shapes_val", "my_own_val"), "7 classes")):
        (tmp_path / f"{name}.yaml").write_text(content)
        proc = _convert("convert_d2_to_mmdet.py", d2["weights"], tmp_path / "out.pth", "--config",
                        tmp_path / f"{name}.yaml")
        assert proc.returncode == 2, proc.stderr[-2000:]
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and says in last, last
        assert not any(tmp_path.glob("out*"))
    # a plain detector's config for a slimmable checkpoint
    plain = tmp_path / "plain.yaml"
    plain.write_text(open(d2["config"]).read().replace("build_us3l_slimmable_resnet_fpn_backbone",
                                                       "build_us3l_resnet_fpn_backbone")
                     .replace("US3LSlimmableRPNHead", "StandardRPNHead")
                     .replace("US3LSlimmableROIHeads", "StandardROIHeads"))
    proc = _convert("convert_d2_to_mmdet.py", d2["weights"], tmp_path / "out.pth", "--config", plain)
    assert proc.returncode == 2 and "slimmable" in proc.stderr.splitlines()[-1], proc.stderr[-2000:]
    assert not any(tmp_path.glob("out*"))


def test_an_unmapped_backbone_key_is_one_error_and_writes_nothing(crossed, tmp_path):
    from us3l.checkpoint.mmdet_format import read_mmdet_checkpoint, write_mmdet_checkpoint

    mm = crossed[0]["mmdet"]
    state, meta = read_mmdet_checkpoint(mm["weights"])
    state["backbone.layer9.0.conv1.weight"] = torch.zeros(1)
    write_mmdet_checkpoint(state, meta, str(tmp_path / "extra.pth"))
    proc = _convert("convert_mmdet_to_d2.py", tmp_path / "extra.pth", tmp_path / "out.pth", "--config", mm["config"])
    assert proc.returncode == 2 and "layer9" in proc.stderr.splitlines()[-1], proc.stderr[-2000:]
    assert not any(tmp_path.glob("out*"))


KINDS = [("mask", "fpn", True), ("mask", "fpn", False), ("mask", "c4", False),
         ("faster", "fpn", True), ("faster", "fpn", False), ("faster", "c4", False)]


@pytest.mark.parametrize("task,layout,slimmable", KINDS)
def test_written_config_builds_the_detector_the_converted_weights_fit(task, layout, slimmable):
    """Every kind, both ways, no training: a Detectron2 detector's weights converted to MMDetection load strictly
    into the model of the MMDetection config written from its Detectron2 config, and the reverse."""
    from detectron2.modeling import build_model
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope

    from us3l.checkpoint.frameworks import d2_to_mmdet_state, mmdet_to_d2_state
    from us3l.checkpoint.model_io import load_state_dict_checked
    from us3l.d2.config import load_config
    from us3l.d2.spec import cfg_from_spec, spec_from_cfg, template_path
    from us3l.detection.spec import DetectorSpec
    from us3l.mmdet.spec import config_from_spec, spec_from_config

    init_default_scope("mmdet")
    d2_layout = "slimmable" if slimmable else layout
    spec = DetectorSpec(task=task, layout=layout, depth=50, num_classes=4, slimmable=slimmable,
                        dataset="us3l_shapes")
    d2_cfg = load_config(template_path(spec), ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""])
    torch.manual_seed(0)
    d2_state = build_model(d2_cfg).state_dict()
    mm_cfg = config_from_spec(spec_from_cfg(d2_cfg))  # Detectron2 config -> MMDetection config
    mm_model = MODELS.build(mm_cfg.model)
    mm_state, _ = d2_to_mmdet_state({k: v for k, v in d2_state.items() if "cell_anchors" not in k}, layout=d2_layout)
    report = load_state_dict_checked(mm_model, mm_state, "d2 -> mmdet")
    assert report.ok, report
    back_cfg = cfg_from_spec(spec_from_config(mm_cfg))  # ... and back: the Detectron2 config written from it
    back_state = build_model(back_cfg).state_dict()
    d2_again, _ = mmdet_to_d2_state(mm_model.state_dict(), layout=d2_layout)
    assert set(d2_again) == {k for k in back_state if "cell_anchors" not in k}
    assert all(d2_again[k].shape == back_state[k].shape for k in d2_again)
