"""The transfer benchmark's frozen protocol really freezes: after real training steps of the slimmable Mask R-CNN
no backbone parameter has moved while the neck and heads have (Detectron2 ``MODEL.BACKBONE.FREEZE_AT 5``,
MMDetection ``model.backbone.frozen_stages=4``)."""
import json
import os

import torch
from ckpt_helpers import ROOT

D2_CONFIG = os.path.join(ROOT, "projects", "segmentation", "configs", "mask_rcnn_US-R50_FPN_slimmable_tiny.yaml")
MM_CONFIG = os.path.join(ROOT, "projects", "segmentation", "mmdet_configs", "mask-rcnn_us-r50_fpn_slimmable_tiny.py")


def _moved(before, after):
    return {k for k in before if not torch.equal(before[k], after[k])}


def _split(params, backbone_prefix):
    backbone = {k for k in params if k.startswith(backbone_prefix)}
    return backbone, set(params) - backbone


def _d2_train(tiny_coco, out, freeze_at, iters):
    """``iters`` sandwich steps (max, one random, min width) of the slimmable tiny Mask R-CNN from a random
    backbone, then per-width BN calibration; returns the parameters (live) and their values before training."""
    import detectron2  # noqa: F401

    from us3l.d2 import load_config, register_us3l_datasets
    from us3l.d2.sandwich import SlimmableDetectorTrainer

    register_us3l_datasets(tiny_coco["datasets_dir"])
    cfg = load_config(D2_CONFIG, ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "SEED", "0",
                                  "MODEL.BACKBONE.FREEZE_AT", str(freeze_at), "MODEL.WEIGHTS", "",
                                  "SOLVER.MAX_ITER", str(iters), "MODEL.US3L.CALIBRATION.WIDTHS", "[0.25]",
                                  "MODEL.US3L.CALIBRATION.NUM_BATCHES", "1", "DATALOADER.NUM_WORKERS", "0",
                                  "DATASETS.TEST", "()", "OUTPUT_DIR", str(out)])
    trainer = SlimmableDetectorTrainer(cfg)
    trainer.resume_or_load(resume=False)
    params = dict(trainer.model.named_parameters())
    before = {k: v.detach().clone() for k, v in params.items()}
    trainer.train()
    return params, before


def test_detectron2_freeze_at_5_keeps_the_slimmable_trunk_fixed(tiny_coco, tmp_path):
    params, before = _d2_train(tiny_coco, tmp_path / "out", 5, 2)
    trunk, rest = _split(params, "backbone.bottom_up.")
    assert len(trunk) > 40 and not any(params[k].requires_grad for k in trunk)
    moved = _moved(before, {k: v.detach() for k, v in params.items()})
    assert not (moved & trunk)
    assert any(k.startswith("backbone.fpn_") for k in moved) and any(k.startswith("roi_heads.") for k in moved)
    assert len(moved) > 0.5 * len(rest)


_SNAPSHOTS = {}


def test_mmdetection_frozen_stages_4_keeps_the_slimmable_trunk_fixed(tiny_coco, tmp_path, monkeypatch):
    import mmcv.ops  # noqa: F401
    import mmdet  # noqa: F401
    from mmengine.hooks import Hook
    from mmengine.registry import HOOKS

    from us3l.mmdet.engine import train_main

    @HOOKS.register_module(name="US3LTestParameterSnapshot", force=True)
    class Snapshot(Hook):  # the weights the training loop starts from (after init_weights) and ends with
        def before_train(self, runner):
            _SNAPSHOTS["before"] = {k: v.detach().clone() for k, v in runner.model.named_parameters()}

        def after_train(self, runner):
            _SNAPSHOTS["after"] = {k: v.detach().clone() for k, v in runner.model.named_parameters()}
            _SNAPSHOTS["grad"] = {k for k, v in runner.model.named_parameters() if v.requires_grad}

    monkeypatch.setenv("US3L_DATASETS", tiny_coco["datasets_dir"])
    opts = {"model.backbone.depth": 18, "model.backbone.init_cfg": None, "model.backbone.frozen_stages": 4,
            "model.neck.in_channels": [64, 128, 256, 512], "model.train_cfg.rpn_proposal.max_per_img": 100,
            "model.train_cfg.rcnn.sampler.num": 64, "train_cfg.max_epochs": 1, "train_dataloader.batch_size": 2,
            "train_dataloader.dataset.indices": 4, "default_hooks.checkpoint.interval": 1, "randomness.seed": 0}
    cli = [f"{k}={json.dumps(v) if isinstance(v, list) else ('None' if v is None else v)}" for k, v in opts.items()]
    config = tmp_path / "frozen_probe.py"  # the user's way to add a hook: a config on top of the stock one
    config.write_text(f"_base_ = [{MM_CONFIG!r}]\ncustom_hooks = [dict(type='US3LTestParameterSnapshot')]\n")
    train_main([str(config), "--work-dir", str(tmp_path / "work"), "--cfg-options", *cli])
    before, after = _SNAPSHOTS["before"], _SNAPSHOTS["after"]
    trunk, rest = _split(before, "backbone.")
    assert len(trunk) > 40 and not (trunk & _SNAPSHOTS["grad"])
    moved = _moved(before, after)
    assert not (moved & trunk)
    assert any(k.startswith("neck.") for k in moved) and any(k.startswith("roi_head.") for k in moved)
    assert len(moved) > 0.5 * len(rest)


def test_without_freezing_the_trunk_moves(tiny_coco, tmp_path):
    """The check above can fail: with FREEZE_AT 0 the same run moves the trunk."""
    params, before = _d2_train(tiny_coco, tmp_path / "out", 0, 1)
    trunk, _ = _split(params, "backbone.bottom_up.")
    assert len(_moved(before, {k: v.detach() for k, v in params.items()}) & trunk) > 0.5 * len(trunk)

