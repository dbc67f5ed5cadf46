"""The reference code's checkpoints (ResNet-18 and ResNet-50, each of its three layouts, built from the
independent description in tests/reference_layout.py) transfer to Detectron2 AND MMDetection: calibrate ->
convert -> a few real fine-tuning iterations at width 0.5; widths without statistics are refused."""
import math
import os

import detectron2  # noqa: F401
import mmcv.ops  # noqa: F401
import mmdet  # noqa: F401
import pytest
import torch
from reference_layout import calibrated_file, channels_at, detection_file, pretrain_file
from tools_loader import load_tool

import us3l
from us3l.checkpoint import CheckpointError
from us3l.checkpoint.combine import combine_calibrated_files
from us3l.checkpoint.d2_format import convert_backbone_to_d2
from us3l.checkpoint.mmdet_format import convert_backbone_to_mmdet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
D2_CONFIG = os.path.join(ROOT, "projects", "detection", "configs", "faster_rcnn_US-R50_FPN_tiny.yaml")
MM_CONFIG = os.path.join(ROOT, "projects", "detection", "mmdet_configs", "faster-rcnn_us-r50_fpn_1x_coco_tiny.py")
WIDTH = 0.5
ARCHS = {"us_resnet18": 18, "us_resnet50": 50}
# 2 training iterations (4 images, batch 2), evaluation on the 8 tiny validation images
MM_TINY = ["train_cfg.max_epochs=1", "train_cfg.val_interval=1", "train_dataloader.batch_size=2",
           "train_dataloader.dataset.indices=4", "default_hooks.checkpoint.interval=1", "randomness.seed=0",
           "model.train_cfg.rpn_proposal.max_per_img=100", "model.train_cfg.rcnn.sampler.num=64",
           "model.test_cfg.rpn.nms_pre=200", "model.test_cfg.rpn.max_per_img=50", "model.neck.norm_cfg=None",
           "default_hooks.logger.interval=1", "model.test_cfg.rcnn.score_thr=0.0"]


def _d2_opts(depth):
    return ["MODEL.RESNETS.DEPTH", str(depth), "MODEL.RESNETS.RES2_OUT_CHANNELS", "64" if depth == 18 else "256",
            "TEST.PRECISE_BN.NUM_ITER", "1", "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2", "SEED", "0"]


def _source_files(arch, layout, folder, tiny_cls):
    """The reference file(s) of ``layout``, taken to a file every width-0.5 detector loads with calibrated BN."""
    if layout == "pretrain":  # calibrate the pre-training checkpoint at 0.5
        torch.save(pretrain_file(arch), folder / "checkpoint.pth.tar")
        assert load_tool("calibrate_bn").main([str(folder / "checkpoint.pth.tar"), str(folder / "cal.pth"),
                                               "--widths", str(WIDTH), "--data-root", tiny_cls["root"],
                                               "--num-batches", "2", "--batch-size", "4",
                                               "--image-size", "64"]) == 0
        return str(folder / "cal.pth")
    if layout == "calibrated":  # two widths of one run, combined
        for w in (WIDTH, 1.0):
            torch.save(calibrated_file(arch, w, ddp=True), folder / f"checkpoint_width_{w}.pth.tar")
        combine_calibrated_files([str(folder / f"checkpoint_width_{w}.pth.tar") for w in (WIDTH, 1.0)],
                                 str(folder / "combined.pth"))
        return str(folder / "combined.pth")
    torch.save(detection_file(arch, WIDTH), folder / f"checkpoint_width_{WIDTH}_for_detection.pth.tar")
    return str(folder / f"checkpoint_width_{WIDTH}_for_detection.pth.tar")


@pytest.fixture(scope="module")
def d2_env(tiny_coco):
    from us3l.d2 import register_us3l_datasets

    register_us3l_datasets(tiny_coco["datasets_dir"])
    return tiny_coco


def _d2_finetune(weights, depth, out, *opts):
    from us3l.d2 import load_config
    from us3l.d2.trainer import US3LTrainer

    cfg = load_config(D2_CONFIG, _d2_opts(depth) + ["MODEL.US3L.WIDTH_MULT", str(WIDTH), "MODEL.WEIGHTS", weights,
                                                    "OUTPUT_DIR", str(out), *opts])
    trainer = US3LTrainer(cfg)
    trainer.resume_or_load(resume=False)
    report = trainer.checkpointer.last_report
    trunk = {k: v.clone() for k, v in trainer.model.state_dict().items() if k.startswith("backbone.bottom_up.")}
    trainer.train()
    losses = [v for v, _ in trainer.storage.history("total_loss").values()]
    return report, trunk, losses


def _mm_finetune(weights, depth, work_dir, *opts):
    from us3l.mmdet.engine import train_main

    runner = train_main([MM_CONFIG, "--work-dir", str(work_dir), "--width", str(WIDTH), "--cfg-options", *MM_TINY,
                         f"model.backbone.depth={depth}", f"model.backbone.init_cfg.checkpoint={weights}",
                         *opts])
    return runner


@pytest.mark.parametrize("layout", ["pretrain", "calibrated", "detection"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_reference_layout_fine_tunes_in_both_frameworks(arch, layout, d2_env, tiny_cls, tmp_path, monkeypatch):
    depth = ARCHS[arch]
    src = _source_files(arch, layout, tmp_path, tiny_cls)
    pkl, mm = str(tmp_path / "bb.pkl"), str(tmp_path / "bb_mmdet.pth")
    convert_backbone_to_d2(src, pkl)
    convert_backbone_to_mmdet(src, mm)

    report, trunk, losses = _d2_finetune(pkl, depth, tmp_path / "d2")
    assert report.ok and len(losses) == 2 and all(math.isfinite(v) for v in losses)
    if layout != "pretrain":  # the loaded tensors are the reference's, sliced / statistics of width 0.5
        ref = detection_file(arch, WIDTH)  # = calibrated_file sliced, same seeds
        for d2, tv in (("res3.0.conv2.weight", "layer2.0.conv2.weight"),
                       ("res4.1.conv1.norm.running_var", "layer3.1.bn1.running_var"),
                       ("stem.conv1.norm.running_mean", "bn1.running_mean")):
            assert torch.equal(trunk[f"backbone.bottom_up.{d2}"], ref[tv]), d2
    monkeypatch.setenv("US3L_DATASETS", d2_env["datasets_dir"])
    runner = _mm_finetune(mm, depth, tmp_path / "mm")
    assert runner.model.backbone.width_mult == WIDTH and runner.iter == 2
    expected_c = channels_at(arch, "layer4.0.conv2", 512, 1, WIDTH)
    assert runner.model.backbone.layer4[0].conv2.weight.shape[0] == expected_c


def test_uncalibrated_widths_are_refused_in_both_frameworks(d2_env, tmp_path, monkeypatch):
    """0.25 from a file calibrated only at 0.5; any width (1.0 included) of a pre-training file; the fixed
    width of a detection export: refused, with what to do."""
    from detectron2.modeling import build_model
    from mmengine.config import Config

    from us3l.d2 import US3LCheckpointer, load_config

    torch.save(calibrated_file("us_resnet18", 0.5), tmp_path / "checkpoint_width_0.5.pth.tar")
    torch.save(pretrain_file("us_resnet18"), tmp_path / "checkpoint.pth.tar")
    torch.save(detection_file("us_resnet18", 0.5), tmp_path / "checkpoint_width_0.5_for_detection.pth.tar")
    cases = [("checkpoint_width_0.5.pth.tar", 0.25, us3l.UncalibratedWidthError, r"Calibrate that width"),
             ("checkpoint.pth.tar", 1.0, us3l.UncalibratedWidthError, r"calibrated widths: none. Calibrate"),
             ("checkpoint_width_0.5_for_detection.pth.tar", 0.25, CheckpointError, r"loads only at width 0.5")]
    monkeypatch.setenv("US3L_DATASETS", d2_env["datasets_dir"])
    for name, width, error, message in cases:
        pkl, mm = str(tmp_path / f"{name}.pkl"), str(tmp_path / f"{name}.mm.pth")
        convert_backbone_to_d2(str(tmp_path / name), pkl)
        convert_backbone_to_mmdet(str(tmp_path / name), mm)
        cfg = load_config(D2_CONFIG, _d2_opts(18) + ["MODEL.US3L.WIDTH_MULT", str(width)])
        for weights in (pkl, str(tmp_path / name)):  # converted, and the reference file itself
            with pytest.raises(error, match=message):
                US3LCheckpointer(build_model(cfg), cfg=cfg).load(weights)
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules

        from us3l.mmdet.width_config import apply_width

        register_all_modules()
        mcfg = Config.fromfile(MM_CONFIG)
        mcfg.merge_from_dict({"model.backbone.depth": 18, "model.backbone.init_cfg.checkpoint": mm})
        apply_width(mcfg, width)
        model = MODELS.build(mcfg.model)
        with pytest.raises(error, match=message):
            model.init_weights()


def test_bn_stats_reset_fine_tunes_a_pretraining_file(d2_env, tmp_path, monkeypatch):
    torch.save(pretrain_file("us_resnet18"), tmp_path / "checkpoint.pth.tar")
    report, trunk, losses = _d2_finetune(str(tmp_path / "checkpoint.pth.tar"), 18, tmp_path / "d2",
                                         "MODEL.US3L.BN_STATS", "reset")
    assert report.ok and any("EMA" in d for d in report.dropped) and all(math.isfinite(v) for v in losses)
    with pytest.raises(CheckpointError, match="frozen"):  # frozen norms would keep mean 0 / var 1
        _d2_finetune(str(tmp_path / "checkpoint.pth.tar"), 18, tmp_path / "d2b", "MODEL.US3L.BN_STATS", "reset",
                     "MODEL.BACKBONE.FREEZE_AT", "2")
    monkeypatch.setenv("US3L_DATASETS", d2_env["datasets_dir"])
    runner = _mm_finetune(str(tmp_path / "checkpoint.pth.tar"), 18, tmp_path / "mm", "model.backbone.bn_stats=reset",
                          "model.backbone.norm_eval=False", "model.backbone.init_cfg.prefix=None")
    assert runner.iter == 2
