"""Real MMDetection runs on the embedded tiny COCO set: train steps, per-width CocoMetric, test entry point."""
import json
import os

import mmcv.ops  # noqa: E402,F401
import mmdet  # noqa: E402,F401
import pytest
from ckpt_helpers import ROOT  # noqa: E402

from us3l.mmdet.engine import test_main as run_test  # noqa: E402  (not collected as a test)
from us3l.mmdet.engine import train_main as run_train  # noqa: E402

DET = os.path.join(ROOT, "projects", "detection", "mmdet_configs")
SEG = os.path.join(ROOT, "projects", "segmentation", "mmdet_configs")
# one epoch of 2 iterations (4 images, batch 2), then CocoMetric on the 8 validation images
TINY = ["train_cfg.max_epochs=1", "train_cfg.val_interval=1", "train_dataloader.batch_size=2",
        "train_dataloader.dataset.indices=4", "default_hooks.checkpoint.interval=1",
        "default_hooks.logger.interval=1", "randomness.seed=0",
        # few RoIs: a C4 head runs res5 on every one of them (2 CPU cores)
        "model.train_cfg.rpn_proposal.max_per_img=100", "model.train_cfg.rcnn.sampler.num=64",
        "model.test_cfg.rpn.nms_pre=200", "model.test_cfg.rpn.max_per_img=50",
        # after 2 steps the scores mean nothing and may underflow to exactly 0 (seen on one machine: class scores
        # 1e-37 and 0, so mmdet's `score > thr` with thr 0 kept no box and CocoMetric had nothing to score):
        # keep every detection
        "model.test_cfg.rcnn.score_thr=-1.0"]


@pytest.fixture
def datasets_env(tiny_coco, monkeypatch):
    monkeypatch.setenv("US3L_DATASETS", tiny_coco["datasets_dir"])
    # no TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD: mmengine's own checkpoints load weights-only (us3l.mmdet.runner)
    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)
    return tiny_coco


def _run(config, work_dir, width, extra=("model.backbone.init_cfg=None",)):
    return run_train([config, "--work-dir", str(work_dir), "--width", str(width), "--cfg-options", *TINY, *extra])


def test_configs_parse_and_tiny_classes_are_the_embedded_datasets():
    import glob

    from mmengine.config import Config

    from us3l.data.synthetic import CLASS_NAMES

    files = sorted(glob.glob(os.path.join(DET, "*.py")) + glob.glob(os.path.join(SEG, "*.py")))
    files = [f for f in files if "slimmable" not in f]  # one detector for every width: tests/test_mmdet_configs.py
    assert len(files) == 12
    for f in files:
        cfg = Config.fromfile(f)
        assert cfg.model.backbone.type == "US3LResNet" and cfg.custom_imports.imports == ["us3l.mmdet"]
        if f.endswith("_tiny.py"):
            assert tuple(cfg.train_dataloader.dataset.metainfo.classes) == CLASS_NAMES
            assert cfg.model.roi_head.bbox_head.num_classes == len(CLASS_NAMES)


def test_faster_rcnn_fpn_train_and_test_at_a_width(datasets_env, tmp_path):
    from ckpt_helpers import us_r50_checkpoint

    from us3l import export_static
    from us3l.checkpoint.frameworks import convert_mmdet_to_d2
    from us3l.checkpoint.mmdet_format import convert_backbone_to_mmdet

    mm_file = str(tmp_path / "us_r50_mmdet.pth")
    path, slimmable = us_r50_checkpoint()
    convert_backbone_to_mmdet(path, mm_file)
    cfg = os.path.join(DET, "faster-rcnn_us-r50_fpn_1x_coco_tiny.py")
    # the pre-trained backbone goes in through init_cfg, as on the command line of a real run
    # (plain FPN: after 2 steps the BN statistics of a fresh FPN are not estimated yet)
    runner = _run(cfg, tmp_path, 0.25, [f"model.backbone.init_cfg.checkpoint={mm_file}", "model.neck.norm_cfg=None"])
    assert runner.model.backbone.width_mult == 0.25 and runner.model.neck.in_channels == [64, 128, 256, 512]
    expected = export_static(slimmable, 0.25).layer3[0].conv2.weight
    moved = (runner.model.backbone.layer3[0].conv2.weight.detach() - expected).abs().mean()
    assert moved < 0.05 * expected.abs().mean()  # loaded, then 2 small SGD steps (random init: ~100%)
    records = json.loads((tmp_path / "metrics_w0.25.json").read_text())
    assert records[-1]["mode"] == "val" and "w0.25/bbox_mAP" in records[-1]["metrics"]
    assert 0.0 <= records[-1]["metrics"]["w0.25/bbox_mAP"] <= 1.0
    metrics = run_test([cfg, str(tmp_path / "epoch_1.pth"), "--work-dir", str(tmp_path), "--width", "0.25",
                        "--cfg-options", "model.neck.norm_cfg=None",
                        *[o for o in TINY if o.startswith("model.test_cfg")]])
    assert metrics["w0.25/bbox_mAP"] == pytest.approx(records[-1]["metrics"]["w0.25/bbox_mAP"])
    # a fine-tuned mmengine checkpoint converts to Detectron2 as a whole detector
    conv = convert_mmdet_to_d2(str(tmp_path / "epoch_1.pth"), str(tmp_path / "d2.pkl"))
    assert conv.layout == "fpn" and not conv.skipped
    assert len(conv.renamed) == len(runner.model.state_dict())


def test_mask_rcnn_c4_train_reports_box_and_mask_ap(datasets_env, tmp_path):
    cfg = os.path.join(SEG, "mask-rcnn_us-r50_c4_1x_coco_tiny.py")
    runner = _run(cfg, tmp_path, 0.5, ["model.backbone.init_cfg=None", "model.roi_head.shared_head.init_cfg=None"])
    assert runner.model.roi_head.shared_head.width_mult == 0.5
    metrics = json.loads((tmp_path / "metrics_w0.50.json").read_text())[-1]["metrics"]
    assert {"w0.50/bbox_mAP", "w0.50/segm_mAP"} <= set(metrics)


def test_width_set_without_propagation_is_refused(datasets_env, tmp_path):
    from mmengine.config import Config
    from mmengine.runner import Runner

    cfg = Config.fromfile(os.path.join(DET, "faster-rcnn_us-r50_fpn_1x_coco_tiny.py"))
    cfg.merge_from_dict({"model.backbone.width_mult": 0.5, "model.backbone.init_cfg": None,
                         "work_dir": str(tmp_path), "train_cfg.max_epochs": 1})
    with pytest.raises(ValueError, match="neck.in_channels=.*apply_width"):
        Runner.from_cfg(cfg).train()
