"""ONE universally slimmable Detectron2 Mask R-CNN: sandwich training, evaluation at three widths from one
checkpoint, the uncalibrated-width rule, export to a plain detector (equal outputs), DDP (2 gloo processes),
the neck/heads switch, resume.

Plumbing tests: a slimmable ResNet-18 in the tiny Mask R-CNN FPN config (64 px synthetic COCO, slimmed
heads), a few real Detectron2 iterations. The pretrained backbone goes through the real converter
(tools/convert_pretrain_to_d2.py), like a user's.
"""
import json
import os
import re
import subprocess
import sys

import detectron2  # noqa: F401
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

import us3l
from us3l.checkpoint.model_io import save_model_backbone
from us3l.d2 import US3LCheckpointer, detector_tools, load_config, register_us3l_datasets
from us3l.d2.sandwich import SlimmableDetectorTrainer
from us3l.d2.trainer import US3LTrainer
from us3l.models import us_resnet18
from us3l.ops import UncalibratedWidthError, USConv2d, active_channels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "projects", "segmentation", "configs", "mask_rcnn_US-R50_FPN_slimmable_tiny.yaml")
ITERS = 6
CAL_WIDTHS = [1.0, 0.5, 0.25]
R18 = ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "SEED", "0",
       "MODEL.US3L.CALIBRATION.NUM_BATCHES", "2", "DATALOADER.NUM_WORKERS", "0"]


def _env(tiny):
    return dict(os.environ, US3L_DATASETS=tiny["datasets_dir"],
                PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _tool(name, *args, tiny):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", name), *args], capture_output=True, text=True,
                          cwd=ROOT, env=_env(tiny), timeout=900)


@pytest.fixture(scope="module")
def pretrained(tiny_coco, tmp_path_factory):
    folder = tmp_path_factory.mktemp("slim_pre")
    torch.manual_seed(0)
    backbone = us_resnet18(num_classes=0)
    us3l.calibrate_bn(backbone, [torch.rand(4, 3, 64, 64) for _ in range(2)], 0.5)
    save_model_backbone(backbone, str(folder / "r18.pth"))
    run = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "convert_pretrain_to_d2.py"),
                          str(folder / "r18.pth"), str(folder / "r18.pkl")], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    return {"pkl": str(folder / "r18.pkl"), "state": backbone.state_dict()}


@pytest.fixture(scope="module")
def trained(tiny_coco, pretrained, tmp_path_factory):
    """ITERS sandwich iterations (max, 1 random, min; distillation on), calibration at 3 widths, eval at 1.0."""
    register_us3l_datasets(tiny_coco["datasets_dir"])
    out = str(tmp_path_factory.mktemp("slim_train") / "out")
    cfg = load_config(CONFIG, R18 + ["MODEL.WEIGHTS", pretrained["pkl"], "SOLVER.MAX_ITER", str(ITERS),
                                     "MODEL.US3L.SANDWICH.DISTILL", "True", "OUTPUT_DIR", out])
    trainer = SlimmableDetectorTrainer(cfg)
    steps = []
    opt_step = trainer.optimizer.step
    trainer.optimizer.step = lambda *a, **k: (steps.append(trainer.iter), opt_step(*a, **k))[1]
    trainer.resume_or_load(resume=False)
    weights0 = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    hist = {k: [v for v, _ in h.values()] for k, h in trainer.storage.histories().items()}
    return {"cfg": cfg, "out": out, "hist": hist, "steps": steps, "trainer": trainer, "weights0": weights0,
            "results": trainer._last_eval_results, "report": trainer.checkpointer.last_report,
            "final": os.path.join(out, "model_final.pth"), "tiny": tiny_coco}


def test_pretrained_backbone_loads_full_width_without_its_bn_statistics(trained, pretrained):
    report = trained["report"]
    assert report.ok and not report.sliced
    w0 = trained["weights0"]
    pre = pretrained["state"]
    # the trunk is the pretrained backbone itself (torchvision names under backbone.bottom_up.)
    assert torch.equal(w0["backbone.bottom_up.layer3.1.conv2.weight"], pre["layer3.1.conv2.weight"])
    assert torch.equal(w0["backbone.bottom_up.conv1.weight"], pre["conv1.weight"])
    # its statistics (calibrated at 0.5 for the pretrained weights) are not carried into fine-tuning
    assert not any(k.endswith("running_mean_w0500") for k in w0)
    assert int(w0["backbone.bottom_up.bn1.num_batches_tracked"]) == 0


def test_sandwich_training_trains_every_width_with_one_step_per_iteration(trained):
    hist = trained["hist"]
    assert trained["steps"] == list(range(ITERS))  # one optimizer step per iteration
    for slot in ("max", "rand1", "min"):
        assert len(hist[f"loss_cls/{slot}"]) == ITERS
        assert len(hist[f"loss_mask/{slot}"]) == ITERS
    for slot in ("rand1", "min"):  # inplace distillation from the max width into the others
        assert len(hist[f"loss_distill_rpn/{slot}"]) == ITERS
        assert all(v >= 0 for v in hist[f"loss_distill_cls/{slot}"])
    assert "loss_distill_rpn/max" not in hist
    assert hist["width/max"] == [1.0] * ITERS and hist["width/min"] == [0.25] * ITERS
    assert len(set(hist["width/rand1"])) > 1 and all(0.25 <= w <= 1.0 for w in hist["width/rand1"])
    # every part of the detector was trained, heads included
    state = trained["trainer"].model.state_dict()
    for k in ("backbone.bottom_up.layer4.1.conv2.weight", "backbone.fpn_lateral2.weight",
              "proposal_generator.rpn_head.conv.weight", "roi_heads.box_head.fc1.weight",
              "roi_heads.mask_head.deconv.weight"):
        assert not torch.equal(state[k], trained["weights0"][k]), k


def test_final_checkpoint_holds_per_width_statistics_and_evaluation_ran(trained):
    state = torch.load(trained["final"], map_location="cpu", weights_only=True)["model"]
    assert state["backbone.bottom_up.layer2.0.bn1.running_mean_w0500"].shape == (active_channels(128, 0.5),)
    assert state["backbone.fpn_output3.norm.running_var_w0250"].shape == (active_channels(64, 0.25),)
    assert int(state["backbone.bottom_up.bn1.num_batches_tracked"]) > 0  # width 1.0 calibrated too
    assert set(trained["results"]) == {"w1.00/bbox", "w1.00/segm"}


def test_one_checkpoint_evaluated_at_three_widths(trained, tmp_path):
    rows = detector_tools.evaluate(trained["final"], CONFIG, [1.0, 0.5, 0.25], str(tmp_path / "ev"), R18)
    assert [r["width"] for r in rows] == [1.0, 0.5, 0.25]
    for r in rows:
        assert 0.0 <= r["box_AP"] <= 100.0 and 0.0 <= r["mask_AP"] <= 100.0
        assert r["weights"] == os.path.abspath(trained["final"])
        assert os.path.isfile(tmp_path / "ev" / "eval" / f"w{r['width']:.2f}" /
                              f"metrics_us3l_shapes_val_w{r['width']:.2f}.json")
    det = [r["detector_gflops"] for r in rows]
    bb = [r["backbone_gflops"] for r in rows]
    assert det[0] > det[1] > det[2] > 0 and bb[0] > bb[1] > bb[2] > 0
    assert all(d > b for d, b in zip(det, bb))  # the whole detector costs more than its backbone
    assert det[2] / det[0] < 0.25  # neck and heads slim too (backbone-only slimming would stay far higher)


def test_uncalibrated_width_is_refused_and_calibrated_on_request(trained, tmp_path):
    with pytest.raises(UncalibratedWidthError, match=r"0\.75.*calibrate"):
        detector_tools.evaluate(trained["final"], CONFIG, [1.0, 0.75], str(tmp_path / "a"), R18)
    run = _tool("eval_widths.py", trained["final"], "--widths", "0.75", "--config", CONFIG, "--output-dir",
                str(tmp_path / "b"), "--opts", *R18, tiny=trained["tiny"])
    assert run.returncode == 2 and "0.75" in run.stderr and "Traceback" not in run.stderr, run.stderr[-2000:]
    # the CLI of the calibration tool stores the width; the result then evaluates
    cal = str(tmp_path / "cal.pth")
    run = _tool("calibrate_detector.py", trained["final"], cal, "--config", CONFIG, "--widths", "0.75",
                "--num-batches", "2", "--opts", *R18, tiny=trained["tiny"])
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert "BN calibrated at width 0.75 on 2 batches (1 of 1 widths)" in run.stderr, run.stderr[-2000:]  # progress
    state = torch.load(cal, map_location="cpu", weights_only=True)["model"]
    assert "backbone.bottom_up.layer1.0.bn1.running_mean_w0750" in state
    assert "backbone.bottom_up.layer1.0.bn1.running_mean_w0500" in state  # earlier widths kept
    run = _tool("eval_widths.py", cal, "--widths", "0.75", "0.5", "--config", CONFIG, "--output-dir",
                str(tmp_path / "c"), "--opts", *R18, tiny=trained["tiny"])
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    with open(tmp_path / "c" / "results.json") as f:
        rows = json.load(f)["rows"]
    assert [r["width"] for r in rows] == [0.75, 0.5] and all(r["detector_gflops"] > 0 for r in rows)
    assert (tmp_path / "c" / "ap_vs_gflops.png").is_file()
    # more batches than one pass over the training set holds: capped at one pass, with a message
    run = _tool("calibrate_detector.py", trained["final"], str(tmp_path / "capped.pth"), "--config", CONFIG,
                "--widths", "0.75", "--num-batches", "1000000", "--opts", *R18, tiny=trained["tiny"])
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    capped = re.search(r"--num-batches 1000000 exceeds the (\d+) batches of one pass .*: capped at (\d+)",
                       run.stdout + run.stderr)
    assert capped and capped[1] == capped[2], (run.stdout + run.stderr)[-2000:]
    assert (tmp_path / "capped.pth").is_file()


def _outputs(model, images):
    model.eval()
    with torch.no_grad():
        return [o["instances"] for o in model([{"image": im} for im in images])]


def _val_images(cfg, n=4):
    from detectron2.data import build_detection_test_loader

    loader = build_detection_test_loader(cfg, cfg.DATASETS.TEST[0])
    return [b[0]["image"] for _, b in zip(range(n), loader)]


def test_export_is_a_plain_smaller_detector_with_the_same_outputs(trained, tmp_path):
    dst = str(tmp_path / "plain_w050.pth")
    run = _tool("export_detector.py", trained["final"], dst, "--width", "0.5", "--config", CONFIG, "--opts", *R18,
                tiny=trained["tiny"])
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    yaml_path = str(tmp_path / "plain_w050.yaml")
    text = open(yaml_path).read()
    assert "US3LSlimmable" not in text and "build_us3l_slimmable" not in text  # plain registered components only
    pcfg = load_config(yaml_path, ["MODEL.DEVICE", "cpu"])
    assert pcfg.MODEL.BACKBONE.NAME == "build_us3l_resnet_fpn_backbone" and pcfg.MODEL.US3L.WIDTH_MULT == 0.5
    assert pcfg.MODEL.FPN.OUT_CHANNELS == 32 and pcfg.MODEL.ROI_BOX_HEAD.FC_DIM == 128
    assert pcfg.MODEL.ROI_MASK_HEAD.CONV_DIM == 32
    plain = build_model(pcfg)
    US3LCheckpointer(plain, cfg=pcfg).load(pcfg.MODEL.WEIGHTS)  # the ordinary loader, every key exact
    assert not any(isinstance(m, us3l.ops.width_state.SlimmableMixin) for m in plain.modules())
    slim, cfg = detector_tools.load_slimmable_detector(CONFIG, trained["final"], R18)
    us3l.set_width(slim, 0.5)
    n_plain = sum(p.numel() for p in plain.parameters())
    assert n_plain < 0.5 * sum(p.numel() for p in slim.parameters())
    assert os.path.getsize(dst) < 0.5 * os.path.getsize(trained["final"])
    images = _val_images(cfg)
    for w in (1.0, 0.25, 0.5, 1.0):  # width switches first (weight copies of recent widths are kept)
        us3l.set_width(slim, w)
        _outputs(slim, images[:1])
    us3l.set_width(slim, 0.5)
    a, b = _outputs(slim, images), _outputs(plain, images)
    assert sum(len(x) for x in a) > 0
    for x, y in zip(a, b):
        assert len(x) == len(y)
        torch.testing.assert_close(x.pred_boxes.tensor, y.pred_boxes.tensor, atol=1e-4, rtol=0)
        torch.testing.assert_close(x.scores, y.scores, atol=1e-4, rtol=0)
        assert torch.equal(x.pred_classes, y.pred_classes)
    # box AP equal on the validation set
    c1, c2 = cfg.clone(), pcfg.clone()
    for c, name in ((c1, "s"), (c2, "p")):
        c.defrost()
        c.OUTPUT_DIR = str(tmp_path / name)
    c1.MODEL.US3L.WIDTH_MULT = 0.5
    ap_slim = SlimmableDetectorTrainer.test(c1, slim)["w0.50/bbox"]["AP"]
    ap_plain = US3LTrainer.test(c2, plain)["w0.50/bbox"]["AP"]
    assert ap_slim == pytest.approx(ap_plain, abs=1e-9)


def test_export_refuses_an_uncalibrated_width(trained, tmp_path):
    run = _tool("export_detector.py", trained["final"], str(tmp_path / "x.pth"), "--width", "0.8", "--config", CONFIG,
                "--opts", *R18, tiny=trained["tiny"])
    assert run.returncode == 2 and "0.8" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "x.pth").exists()
    run = _tool("export_detector.py", trained["final"], str(tmp_path / "x.pth"), "--width", "1.5", "--config", CONFIG,
                "--opts", *R18, tiny=trained["tiny"])
    assert run.returncode == 2 and "outside" in run.stderr


def test_width_sized_checkpoint_is_refused_by_the_slimmable_loader(trained, tmp_path):
    from us3l.checkpoint import CheckpointError

    state = torch.load(trained["final"], map_location="cpu", weights_only=True)["model"]
    state["roi_heads.box_head.fc1.weight"] = state["roi_heads.box_head.fc1.weight"][:128]
    bad = str(tmp_path / "bad.pth")
    torch.save({"model": state}, bad)
    with pytest.raises(CheckpointError, match="fc1.weight"):
        detector_tools.load_slimmable_detector(CONFIG, bad, R18)


def test_resume_continues_with_the_same_widths(trained):
    cfg = trained["cfg"].clone()
    cfg.defrost()
    cfg.SOLVER.MAX_ITER = ITERS + 1
    cfg.MODEL.US3L.CALIBRATION.NUM_BATCHES = 0
    cfg.DATASETS.TEST = ()
    trainer = SlimmableDetectorTrainer(cfg)
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == ITERS
    assert trainer.checkpointer.last_report.ok
    from us3l.detection import sample_widths

    assert sample_widths(trainer._trainer.sandwich, 3) == sample_widths(trained["trainer"]._trainer.sandwich, 3)


def test_neck_and_heads_switch_off_keeps_them_full_width(tiny_coco, pretrained, tmp_path):
    register_us3l_datasets(tiny_coco["datasets_dir"])
    opts = R18 + ["MODEL.US3L.SLIM_NECK_HEADS", "False", "MODEL.WEIGHTS", pretrained["pkl"], "SOLVER.MAX_ITER", "1",
                  "MODEL.US3L.CALIBRATION.WIDTHS", "[0.25]", "OUTPUT_DIR", str(tmp_path / "o")]
    cfg = load_config(CONFIG, opts)
    trainer = SlimmableDetectorTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()  # one sandwich step, calibration at 0.25 and WIDTH_MULT 1.0, evaluation at 1.0
    assert set(us3l.calibrated_widths(trainer.model)) == {0.25, 1.0}
    net = trainer.model
    us3l.set_width(net, 0.25)
    assert type(net.proposal_generator.rpn_head.conv).__name__ == "Conv2d"
    assert type(net.roi_heads.box_head.fc1) is torch.nn.Linear
    lat = net.backbone.fpn_lateral5
    assert isinstance(lat, USConv2d) and lat.active_in_out() == (active_channels(512, 0.25), 64)
    net.eval()
    with torch.no_grad():
        feats = net.backbone(torch.rand(1, 3, 64, 64))
    assert feats["p2"].shape[1] == 64
    plain, pcfg = us3l.d2.export_plain_detector(net, cfg, 0.25)
    assert pcfg.MODEL.FPN.OUT_CHANNELS == 64 and pcfg.MODEL.ROI_BOX_HEAD.FC_DIM == 256
    images = _val_images(cfg, 2)
    for x, y in zip(_outputs(net, images), _outputs(plain, images)):
        torch.testing.assert_close(x.scores, y.scores, atol=1e-4, rtol=0)


def test_two_gloo_processes_train_a_sandwich_step(tiny_coco, pretrained, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, os.path.join(ROOT, "projects", "segmentation", "train_net.py"), "--cpu-processes", "2",
           "--config-file", CONFIG, *R18, "MODEL.WEIGHTS", pretrained["pkl"], "SOLVER.MAX_ITER", "2",
           "SOLVER.IMS_PER_BATCH", "4", "MODEL.US3L.SANDWICH.DISTILL", "True", "MODEL.US3L.CALIBRATION.WIDTHS",
           "[1.0, 0.25]", "MODEL.US3L.WIDTH_MULT", "0.25", "OUTPUT_DIR", str(out)]
    run = subprocess.run(cmd, env=_env(tiny_coco), capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    log = open(out / "log.txt").read()
    assert "World size: 2" in log and "loss_distill_cls/min" in log
    with open(out / "metrics_us3l_shapes_val_w0.25.json") as f:
        assert "AP" in json.load(f)["bbox"]
    state = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)["model"]
    assert "backbone.bottom_up.layer1.0.bn1.running_mean_w0250" in state


def test_cpu_autocast_bf16_sandwich_step(tiny_coco, pretrained, tmp_path):
    register_us3l_datasets(tiny_coco["datasets_dir"])
    cfg = load_config(CONFIG, R18 + ["MODEL.WEIGHTS", pretrained["pkl"], "SOLVER.MAX_ITER", "1", "SOLVER.AMP.ENABLED",
                                     "True", "MODEL.US3L.CALIBRATION.NUM_BATCHES", "0", "DATASETS.TEST", "()",
                                     "OUTPUT_DIR", str(tmp_path / "amp")])
    trainer = SlimmableDetectorTrainer(cfg)
    trainer.resume_or_load(resume=False)
    before = trainer.model.roi_heads.box_head.fc1.weight.detach().clone()
    with EventStorage(0) as trainer.storage:
        trainer.iter = 0
        trainer.run_step()
    assert trainer._trainer.amp_device == "cpu"
    assert not torch.equal(before, trainer.model.roi_heads.box_head.fc1.weight)
