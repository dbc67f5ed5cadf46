"""The universally slimmable Mask R-CNN in real MMDetection: sandwich training through mmengine's Runner,
evaluation at three widths from one checkpoint, the uncalibrated-width rule, export to a plain detector,
and a 2-process gloo sandwich run (tiny images, US-ResNet-18, few iterations)."""
import os
import re
import subprocess
import sys
from dataclasses import replace

import mmcv.ops  # noqa: F401
import mmdet  # noqa: F401
import pytest
import torch
from ckpt_helpers import ROOT
from mmdet_helpers import MODEL_OPTS
from mmdet_helpers import cli_options as _cli
from ports import free_port

SEG = os.path.join(ROOT, "projects", "segmentation", "mmdet_configs")
DET = os.path.join(ROOT, "projects", "detection", "mmdet_configs")
MASK_CFG = os.path.join(SEG, "mask-rcnn_us-r50_fpn_slimmable_tiny.py")
FASTER_CFG = os.path.join(DET, "faster-rcnn_us-r50_fpn_slimmable_tiny.py")
# US-ResNet-18 (no pre-trained file), few RoIs; 2 iterations of batch 2
RUN_OPTS = {"train_cfg.max_epochs": 1, "train_dataloader.batch_size": 2, "train_dataloader.dataset.indices": 4,
            "default_hooks.checkpoint.interval": 1, "default_hooks.logger.interval": 1, "randomness.seed": 0}


@pytest.fixture(scope="module")
def trained(datasets, tmp_path_factory):
    """One sandwich fine-tuning run of the slimmable Mask R-CNN through mmengine's Runner (2 iterations)."""
    from us3l.mmdet.engine import train_main

    work = tmp_path_factory.mktemp("slim_train")
    runner = train_main([MASK_CFG, "--work-dir", str(work), "--cfg-options", *_cli({**MODEL_OPTS, **RUN_OPTS})])
    return {"runner": runner, "work": work, "ckpt": str(work / "epoch_1.pth")}


def _build(cfg_path=MASK_CFG, **extra):
    from mmdet.registry import MODELS

    from us3l.mmdet.slimmable_eval import slimmable_config

    cfg = slimmable_config(cfg_path, {**MODEL_OPTS, **extra})
    return MODELS.build(cfg.model), cfg


def _batch(cfg, n=2, split="train"):
    from us3l.mmdet.slimmable_eval import data_batches

    return next(data_batches(cfg[f"{split}_dataloader"], n))


# --------------------------------------------------------------------------------------------- structure
def test_every_part_follows_the_width_without_zero_padding(datasets):
    from us3l import set_width
    from us3l.ops import active_channels

    model, cfg = _build()
    data = model.data_preprocessor(_batch(cfg), False)
    for w in (1.0, 0.5, 0.25):
        set_width(model, w)
        feats = model.backbone(data["inputs"])
        assert [f.shape[1] for f in feats] == [active_channels(c, w) for c in (64, 128, 256, 512)]
        outs = model.neck(feats)
        assert {o.shape[1] for o in outs} == {active_channels(256, w)}
        cls, reg = model.rpn_head(outs)
        assert cls[0].shape[1] == 3 and reg[0].shape[1] == 12  # objectness / deltas of every anchor stay full
    set_width(model, 0.5)
    fc1 = model.roi_head.bbox_head.shared_fcs[0]
    assert fc1.active_in_out() == (128 * 49, active_channels(1024, 0.5))
    assert model.roi_head.bbox_head.fc_cls.active_in_out() == (active_channels(1024, 0.5), 5)
    assert model.roi_head.mask_head.conv_logits.active_in_out() == (128, 4)
    assert model.roi_head.mask_head.upsample.active_in_out() == (128, 128)


def test_backbone_only_switch_keeps_neck_and_heads_full(datasets):
    from us3l import set_width

    model, cfg = _build(**{"model.slim_neck_and_heads": False})
    assert type(model.rpn_head.rpn_conv).__name__ == "Conv2d"  # the heads are mmdet's plain layers
    data = model.data_preprocessor(_batch(cfg), False)
    set_width(model, 0.25)
    outs = model.neck(model.backbone(data["inputs"]))
    assert {o.shape[1] for o in outs} == {256}


def test_wrong_component_types_are_refused():
    with pytest.raises(ValueError, match="model.neck.type must be 'SlimmableFPN'"):
        _build(**{"model.neck.type": "FPN"})
    with pytest.raises(ValueError, match="bbox_head.type must be 'SlimmableShared2FCBBoxHead'"):
        _build(**{"model.roi_head.bbox_head.type": "Shared2FCBBoxHead"})
    with pytest.raises(ValueError, match="outside this model's width range"):
        from us3l import set_width
        set_width(_build()[0], 0.1)


# --------------------------------------------------------------------------------------------- training
def test_sandwich_step_accumulates_every_width_then_steps_once(datasets):
    """The gradient of one sandwich step is the sum of the per-width gradients; the optimizer steps once."""
    from mmdet.models.detectors import MaskRCNN
    from mmengine.optim import OptimWrapper

    from us3l import set_width

    model, cfg = _build(**{"model.sandwich.distill": False, "model.sandwich.seed": 3})
    model.train()
    batch = _batch(cfg)
    widths = model.train_widths()
    assert widths[0] == 1.0 and widths[-1] == 0.25 and len(widths) == 4
    model._step = 0  # the step below draws the same widths
    params = [p for p in model.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params]

    # reference: every width's supervised losses, back-propagated one after another (mmdet's own loss)
    torch.manual_seed(0)
    data = model.data_preprocessor(batch, True)
    for w in widths:
        set_width(model, w)
        losses = MaskRCNN.loss(model, data["inputs"], data["data_samples"])
        sum(v if isinstance(v, torch.Tensor) else sum(v) for k, v in losses.items() if "loss" in k).backward()
    expected = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params]
    model.zero_grad()

    optim = OptimWrapper(torch.optim.SGD(params, lr=1.0))
    steps = []
    optim.optimizer.step = (lambda step: lambda *a, **k: (steps.append(1), step(*a, **k))[1])(optim.optimizer.step)
    torch.manual_seed(0)
    log = model.train_step(batch, optim)
    assert len(steps) == 1 and optim.inner_count == 1
    assert {"loss", "loss_rand1", "loss_rand2", "loss_min", "loss_cls", "loss_mask"} <= set(log)
    moved = [s - p.detach() for s, p in zip(start, params)]  # lr 1, no momentum: the accumulated gradient
    for m, e in zip(moved, expected):
        torch.testing.assert_close(m, e, rtol=1e-4, atol=1e-5)
    assert all(p.grad is None or not p.grad.any() for p in params)  # zeroed after the step


def test_widths_follow_the_runner_iteration_and_gradient_accumulation_is_kept(datasets):
    """Widths are drawn from (seed, runner iteration): a resumed run trains what the uninterrupted one would
    have. mmengine's ``accumulative_counts`` still counts iterations, not widths."""
    from mmengine.logging import MessageHub
    from mmengine.optim import OptimWrapper

    from us3l.detection import sample_widths

    model, cfg = _build(**{"model.sandwich.seed": 5, "model.sandwich.distill": False})
    hub = MessageHub.get_instance("us3l-slimmable-widths-test")
    hub.update_info("iter", 7)
    assert model.train_widths() == sample_widths(model.sandwich, 7) != sample_widths(model.sandwich, 8)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optim = OptimWrapper(torch.optim.SGD(params, lr=0.1), accumulative_counts=2)
    optim.initialize_count_status(model, 0, 4)
    start = [p.detach().clone() for p in params]
    model.train_step(_batch(cfg), optim)
    assert optim.inner_count == 1 and all(torch.equal(a, p) for a, p in zip(start, params))  # accumulated only
    model.train_step(_batch(cfg), optim)
    assert optim.inner_count == 2 and not all(torch.equal(a, p) for a, p in zip(start, params))  # one step


def test_inplace_distillation_adds_losses_to_the_smaller_widths(datasets):
    from mmengine.optim import OptimWrapper

    model, cfg = _build(**{"model.sandwich.seed": 1})
    model.train()
    log = model.train_step(_batch(cfg), OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.0)))
    # the smaller widths learn from the max width's objectness and box classes (summed over them, logged apart)
    assert float(log["loss_distill_rpn"]) > 0 and float(log["loss_distill_cls"]) > 0
    assert float(log["loss_min"]) > 0 and torch.isfinite(log["loss"])
    model, cfg = _build(**{"model.sandwich.distill": False})
    model.train()
    log = model.train_step(_batch(cfg), OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.0)))
    assert not any(k.startswith("loss_distill") for k in log)
    with pytest.raises(RuntimeError, match="outside its sandwich train_step"):
        data = model.data_preprocessor(_batch(cfg), True)
        model.loss(data["inputs"], data["data_samples"])


def test_runner_trains_with_the_sandwich_rule(trained):
    runner = trained["runner"]
    assert runner.iter == 2 and os.path.isfile(trained["ckpt"])
    logs = "".join(open(os.path.join(d, f)).read() for d, _, fs in os.walk(trained["work"]) for f in fs
                   if f.endswith(".log"))
    assert re.search(r"loss_min: \d", logs) and re.search(r"loss_rand2: \d", logs)


def test_interrupted_run_resumes_at_its_iteration_from_the_saved_state(datasets, tmp_path, monkeypatch):
    """mmengine's --resume: the run continues at the saved iteration, from the saved weights, and trains the
    widths the uninterrupted run trains there (a function of the run's seed and the iteration)."""
    from mmengine.logging import MessageHub

    from us3l.checkpoint.safe_load import load_torch
    from us3l.detection import sample_widths
    from us3l.mmdet.engine import train_main
    from us3l.mmdet.slimmable_detector import SlimmableMaskRCNN

    seen = []  # (iteration, widths, first backbone weight) at each training step: a spy, the real method runs
    original = SlimmableMaskRCNN.train_widths

    def spy(self):
        widths = original(self)
        seen.append((MessageHub.get_current_instance().get_info("iter"), widths,
                     self.backbone.conv1.weight.detach().clone()))
        return widths

    monkeypatch.setattr(SlimmableMaskRCNN, "train_widths", spy)
    work = tmp_path / "run"
    opts = {**MODEL_OPTS, **RUN_OPTS, "train_cfg.max_epochs": 1}
    first = train_main([MASK_CFG, "--work-dir", str(work), "--cfg-options", *_cli(opts)])  # stops after epoch 1
    assert first.iter == 2 and [i for i, _, _ in seen] == [0, 1]
    saved = load_torch(str(work / "epoch_1.pth"))
    sandwich = first.model.sandwich

    seen.clear()
    resumed = train_main([MASK_CFG, "--work-dir", str(work), "--resume", "--cfg-options",
                          *_cli({**opts, "train_cfg.max_epochs": 2})])
    assert resumed.iter == 4 and [i for i, _, _ in seen] == [2, 3]
    seed = saved["meta"]["seed"]
    for i, widths, _ in seen:
        assert widths == sample_widths(replace(sandwich, seed=seed), i)
    torch.testing.assert_close(seen[0][2], saved["state_dict"]["backbone.conv1.weight"], rtol=0, atol=0)
    assert "optimizer" in saved and saved["meta"]["iter"] == 2


# ------------------------------------------------------------------------------------ calibration / eval
@pytest.fixture(scope="module")
def calibrated(trained, tmp_path_factory):
    from us3l.mmdet.slimmable_eval import calibrate_widths, load_slimmable_detector, save_slimmable_detector

    model, cfg = load_slimmable_detector(MASK_CFG, trained["ckpt"], cfg_options=MODEL_OPTS)
    used = calibrate_widths(model, cfg, [1.0, 0.6, 0.25], num_batches=2)
    assert used == {1.0: 2, 0.6: 2, 0.25: 2}
    path = str(tmp_path_factory.mktemp("calibrated") / "calibrated.pth")
    save_slimmable_detector(model, path)
    return path


def test_one_checkpoint_evaluates_at_three_widths(calibrated, tmp_path):
    """The backend of tools/eval_widths.py: COCO box / mask AP and whole-detector GFLOPs per width."""
    from us3l.mmdet import detector_tools

    data = torch.load(calibrated, map_location="cpu", weights_only=True)  # plain tensors
    assert data["meta"]["calibrated_widths"] == [0.25, 0.6, 1.0]
    rows = detector_tools.evaluate(calibrated, MASK_CFG, [0.25, 1.0, 0.6], str(tmp_path), opts=_cli(MODEL_OPTS))
    assert [r["width"] for r in rows] == [1.0, 0.6, 0.25]
    for r in rows:
        assert 0.0 <= r["box_AP"] <= 100.0 and 0.0 <= r["mask_AP"] <= 100.0
        assert r["weights"] == os.path.abspath(calibrated)
    gflops = [r["detector_gflops"] for r in rows]
    assert gflops[0] > gflops[1] > gflops[2] > 0  # the whole detector shrinks, not only the backbone
    assert all(r["detector_gflops"] > r["backbone_gflops"] for r in rows)


def test_calibration_caps_more_batches_than_the_training_set_holds(trained, tmp_path):
    """The loaders repeat forever: --num-batches 1000000 would run for hours on the same images. Capped at one pass
    over the training set (the message: tests/test_slimmable_detector_d2.py, through the tool)."""
    from us3l.mmdet import detector_tools

    out = detector_tools.calibrate(trained["ckpt"], str(tmp_path / "cal.pth"), MASK_CFG, [1.0], 1000000,
                                   opts=_cli(MODEL_OPTS))
    assert list(out["widths"]) == [1.0] and 0 < out["widths"][1.0] <= 16  # the tiny set: a few batches
    assert (tmp_path / "cal.pth").is_file()


def test_uncalibrated_width_is_refused_before_anything_runs(trained, calibrated):
    from us3l.mmdet.export import export_detector
    from us3l.mmdet.slimmable_eval import evaluate_widths, load_slimmable_detector
    from us3l.ops import UncalibratedWidthError

    model, cfg = load_slimmable_detector(MASK_CFG, trained["ckpt"], cfg_options=MODEL_OPTS)
    with pytest.raises(UncalibratedWidthError, match="no BN statistics for width 1.0"):
        evaluate_widths(model, cfg, [1.0])  # a fine-tuned detector holds statistics for no width
    model, cfg = load_slimmable_detector(MASK_CFG, calibrated, cfg_options=MODEL_OPTS)
    with pytest.raises(UncalibratedWidthError, match=r"width 0.5 .*calibrated widths: \[0.25, 0.6, 1.0\]"):
        evaluate_widths(model, cfg, [1.0, 0.5])
    with pytest.raises(UncalibratedWidthError):
        export_detector(model, cfg, 0.5, "/nonexistent/never_written.pth")


def test_wrong_checkpoint_is_refused(trained, tmp_path):
    from us3l.checkpoint import CheckpointError
    from us3l.mmdet.slimmable_eval import load_slimmable_detector

    with pytest.raises(CheckpointError, match="does not match the model"):  # an R-50 config, an R-18 file
        load_slimmable_detector(MASK_CFG, trained["ckpt"])
    bad = tmp_path / "corrupt.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_slimmable_detector(MASK_CFG, str(bad), cfg_options=MODEL_OPTS)


# ------------------------------------------------------------------------------------------------ export
def test_export_is_a_plain_smaller_detector_with_the_same_outputs(calibrated, tmp_path):
    from mmdet.registry import MODELS
    from mmengine.config import Config

    from us3l import set_width
    from us3l.mmdet.export import export_detector_file
    from us3l.mmdet.slimmable_eval import coco_metrics, evaluate_widths, load_slimmable_detector
    from us3l.ops import active_channels

    dst = str(tmp_path / "mask_rcnn_w0.6.pth")
    export_detector_file(calibrated, dst, 0.6, MASK_CFG, cfg_options=MODEL_OPTS)
    plain_cfg = Config.fromfile(dst[:-4] + ".py")
    types = {v for k, v in _walk(plain_cfg.model) if k == "type"}
    assert not any("Slimmable" in t for t in types)
    assert {"MaskRCNN", "US3LResNet", "FPN", "RPNHead", "Shared2FCBBoxHead", "FCNMaskHead"} <= types
    assert plain_cfg.model.backbone.width_mult == 0.6
    assert plain_cfg.model.neck.in_channels == [active_channels(c, 0.6) for c in (64, 128, 256, 512)]
    assert plain_cfg.model.neck.out_channels == plain_cfg.model.rpn_head.in_channels == active_channels(256, 0.6)
    assert plain_cfg.model.roi_head.bbox_head.fc_out_channels == active_channels(1024, 0.6)
    assert plain_cfg.model.roi_head.mask_head.conv_out_channels == active_channels(256, 0.6)
    plain = MODELS.build(plain_cfg.model)
    state = torch.load(dst, map_location="cpu", weights_only=True)["state_dict"]
    plain.load_state_dict(state, strict=True)
    plain.eval()
    assert os.path.getsize(dst) < 0.5 * os.path.getsize(calibrated)

    slim, cfg = load_slimmable_detector(MASK_CFG, calibrated, cfg_options=MODEL_OPTS)
    batch = _batch(cfg, n=4, split="test")
    with torch.no_grad():
        for w in (1.0, 0.6, 0.25, 1.0):  # width switches first (weight copies of recent widths are kept)
            set_width(slim, w)
            slim.test_step(batch[:1] if isinstance(batch, list) else batch)
        set_width(slim, 0.6)
        a, b = slim.test_step(batch), plain.test_step(batch)
    for x, y in zip(a, b):
        assert len(x.pred_instances) == len(y.pred_instances) > 0
        torch.testing.assert_close(x.pred_instances.bboxes, y.pred_instances.bboxes, atol=1e-4, rtol=0)
        torch.testing.assert_close(x.pred_instances.scores, y.pred_instances.scores, atol=1e-4, rtol=0)
    slim_ap = evaluate_widths(slim, cfg, [0.6])[0.6]
    plain_ap = coco_metrics(plain, plain_cfg)
    assert plain_ap["bbox_mAP"] == slim_ap["bbox_mAP"] and plain_ap["segm_mAP"] == slim_ap["segm_mAP"]


def _walk(node, key=None):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, k)
    elif isinstance(node, (list, tuple)):
        for v in node:
            yield from _walk(v, key)
    else:
        yield key, node


# ------------------------------------------------------------------------------------------ distributed
def test_torchrun_two_processes_sandwich_step(datasets, tmp_path):
    work = tmp_path / "work"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           os.path.join(ROOT, "projects", "detection", "mmdet_train.py"), FASTER_CFG, "--launcher", "pytorch",
           "--work-dir", str(work), "--cfg-options",
           *_cli({**MODEL_OPTS, **RUN_OPTS, "train_dataloader.dataset.indices": 8})]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    log = run.stdout + run.stderr
    assert run.returncode == 0, run.stdout[-3000:] + "\n--- stderr ---\n" + run.stderr[-3000:]
    assert "Distributed training: True" in log and "GPU number: 2" in log
    assert re.search(r"Epoch\(train\) \[1\]\[2/2\].*loss_min: \d", log)  # 8 images, 2 per process: 2 sandwich steps
    assert (work / "epoch_1.pth").is_file()


def test_mmdetection_slimmable_depth_without_neck_channels_says_which_key(tiny_coco):
    """``model.backbone.depth=18`` on the slimmable config without the matching FPN channels: one clear error at
    build time naming model.neck.in_channels (it used to fail inside the first forward pass)."""
    from mmdet.registry import MODELS

    from us3l.mmdet.slimmable_eval import slimmable_config

    cfg = slimmable_config(MASK_CFG, {"model.backbone.depth": 18, "model.backbone.init_cfg": None})
    with pytest.raises(ValueError, match=r"model.neck.in_channels=\[256, 512, 1024, 2048\] but the backbone .* "
                                         r"gives \[64, 128, 256, 512\].*set model.neck.in_channels=\[64, 128, 256"):
        MODELS.build(cfg.model)
