"""The slimmable Mask R-CNN under Detectron2's LazyConfig: trained with sandwich steps, calibrated and evaluated
at two widths by ``projects/segmentation/lazy_train_net.py``, as a Detectron2 user of LazyConfig runs it
(US-ResNet-18, 4 iterations, the embedded 64-px set). Its checkpoint is the YAML twin's: the YAML-built
slimmable detector loads it with every key exact."""
import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAZY = os.path.join(ROOT, "projects", "segmentation", "lazy_configs", "mask_rcnn_US-R50_FPN_slimmable_tiny.py")
YAML = os.path.join(ROOT, "projects", "segmentation", "configs", "mask_rcnn_US-R50_FPN_slimmable_tiny.yaml")
SCRIPT = os.path.join(ROOT, "projects", "segmentation", "lazy_train_net.py")
TINY = ["model.backbone.depth=18", "train.max_iter=4", "us3l.calibration.num_batches=2", "us3l.eval_widths=[1.0,0.25]",
        "lr_multiplier.scheduler.num_updates=4", "lr_multiplier.scheduler.milestones=[3]"]


def _run(args, tiny_coco, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1", US3L_DATASETS=tiny_coco["datasets_dir"])
    return subprocess.run([sys.executable, SCRIPT, "--config-file", LAZY, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def trained(tiny_coco, tmp_path_factory):
    out = tmp_path_factory.mktemp("lazy")
    r = _run([*TINY, f"train.output_dir={out}"], tiny_coco, out)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return out, r


def test_lazyconfig_trains_and_evaluates_at_two_widths(trained):
    out, r = trained
    assert (out / "model_final.pth").is_file()
    results = json.load(open(out / "inference" / "widths.json"))
    assert set(results) == {"w1.00/bbox", "w1.00/segm", "w0.25/bbox", "w0.25/segm"}, results
    assert all("AP" in v for v in results.values())
    log = r.stdout + r.stderr
    assert "calibrated BN statistics at widths [1.0, 0.5, 0.25]" in log  # the calibration hook ran, then eval
    assert "total_loss" in log


def test_lazyconfig_eval_only_reproduces_the_training_evaluation(trained, tiny_coco):
    out, _ = trained
    again = out / "again"
    r = _run(["--eval-only", *TINY, f"train.output_dir={again}", f"train.init_checkpoint={out / 'model_final.pth'}"],
             tiny_coco, out)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    first = json.load(open(out / "inference" / "widths.json"))
    second = json.load(open(again / "inference" / "widths.json"))
    assert first == second  # the calibrated statistics travel in model_final.pth


def test_lazyconfig_checkpoint_is_the_yaml_twins(trained, tiny_coco):
    from us3l.checkpoint.io import read_framework_checkpoint
    from us3l.d2 import load_slimmable_detector, register_us3l_datasets

    out, _ = trained
    register_us3l_datasets(tiny_coco["datasets_dir"])
    model, _ = load_slimmable_detector(YAML, str(out / "model_final.pth"),
                                       ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"])
    saved = read_framework_checkpoint(str(out / "model_final.pth"))["model"]  # weights only, trainer allowlist
    state = model.state_dict()
    assert set(saved) == set(state)
    assert all(torch.equal(torch.as_tensor(saved[k]), state[k]) for k in state)
