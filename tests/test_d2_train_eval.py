"""Fine-tune at a width on the embedded COCO-format set, evaluate with pycocotools, eval-only and resume.

Plumbing test: a US3L ResNet-18 at width 0.5 in the tiny Mask R-CNN FPN config (64 px images, slimmed
heads), so that a few real Detectron2 iterations run in seconds on a CPU.
"""
import json
import math
import os
import subprocess
import sys

import detectron2  # noqa: E402,F401
import pytest
import torch

import us3l  # noqa: E402
from us3l.checkpoint.model_io import save_model_backbone  # noqa: E402
from us3l.d2 import DatasetFilesError, check_datasets, load_config, register_coco_json, register_us3l_datasets  # noqa: E402
from us3l.d2.checkpoint import US3LCheckpointer  # noqa: E402
from us3l.d2.trainer import US3LTrainer  # noqa: E402
from us3l.models import us_resnet18  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "projects", "segmentation", "configs", "mask_rcnn_US-R50_FPN_tiny.yaml")
ENTRY = os.path.join(ROOT, "projects", "segmentation", "train_net.py")
WIDTH = 0.5
ITERS = 20
OPTS = ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.US3L.WIDTH_MULT", str(WIDTH),
        "TEST.PRECISE_BN.NUM_ITER", "2", "SEED", "0"]


@pytest.fixture(scope="module")
def trained(tiny_coco, tmp_path_factory):
    folder = tmp_path_factory.mktemp("d2train")
    torch.manual_seed(0)
    backbone = us_resnet18(num_classes=0)
    us3l.calibrate_bn(backbone, [torch.rand(4, 3, 64, 64) for _ in range(2)], WIDTH)
    save_model_backbone(backbone, str(folder / "r18.pth"))
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "convert_pretrain_to_d2.py"), str(folder / "r18.pth"),
                    str(folder / "r18.pkl")], check=True, cwd=ROOT, capture_output=True)
    register_us3l_datasets(tiny_coco["datasets_dir"])
    out = str(folder / "out")
    cfg = load_config(CONFIG, OPTS + ["MODEL.WEIGHTS", str(folder / "r18.pkl"), "SOLVER.MAX_ITER", str(ITERS),
                                      "OUTPUT_DIR", out])
    trainer = US3LTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    losses = [v for v, _ in trainer.storage.history("total_loss").values()]
    return {"cfg": cfg, "out": out, "losses": losses, "results": trainer._last_eval_results, "folder": folder,
            "load_report": trainer.checkpointer.last_report, "tiny": tiny_coco}


def test_training_reduces_the_loss(trained):
    losses = trained["losses"]
    assert len(losses) == ITERS and all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses
    report = trained["load_report"]  # the pretrained backbone really went in, at the width
    assert report.ok and report.sliced and len(report.loaded) == 120


def test_coco_evaluation_returns_box_and_mask_ap_keyed_by_width(trained):
    results = trained["results"]
    assert set(results) == {"w0.50/bbox", "w0.50/segm"}
    for task in results.values():
        assert 0.0 <= task["AP"] <= 100.0 and 0.0 <= task["AP50"] <= 100.0
    with open(os.path.join(trained["out"], "metrics_us3l_shapes_val_w0.50.json")) as f:
        record = json.load(f)
    assert record["width"] == WIDTH and record["arch"] == "resnet18"
    assert record["bbox"]["AP"] == pytest.approx(results["w0.50/bbox"]["AP"])
    assert record["segm"]["AP"] == pytest.approx(results["w0.50/segm"]["AP"])


def test_eval_only_from_saved_checkpoint_reproduces_metrics(trained):
    out = trained["out"]
    with open(os.path.join(out, "metrics_us3l_shapes_val_w0.50.json")) as f:
        during_training = json.load(f)
    eval_dir = str(trained["folder"] / "eval")
    env = dict(os.environ, US3L_DATASETS=trained["tiny"]["datasets_dir"])
    run = subprocess.run([sys.executable, ENTRY, "--eval-only", "--config-file", CONFIG, *OPTS,
                          "MODEL.WEIGHTS", os.path.join(out, "model_final.pth"), "OUTPUT_DIR", eval_dir],
                         capture_output=True, text=True, cwd=ROOT, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    with open(os.path.join(eval_dir, "metrics_us3l_shapes_val_w0.50.json")) as f:
        evaluated = json.load(f)
    for task in ("bbox", "segm"):
        assert set(evaluated[task]) == set(during_training[task])
        for k, v in during_training[task].items():
            assert evaluated[task][k] == pytest.approx(v, abs=1e-6, nan_ok=True), (task, k)


def test_resume_continues_from_the_last_checkpoint(trained):
    cfg = trained["cfg"].clone()
    cfg.defrost()
    cfg.SOLVER.MAX_ITER = ITERS + 2
    cfg.TEST.PRECISE_BN.ENABLED = False
    trainer = US3LTrainer(cfg)
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == ITERS
    assert trainer.checkpointer.last_report.ok and not trainer.checkpointer.last_report.sliced


def test_missing_dataset_json_is_a_clear_error(tmp_path):
    register_coco_json("us3l_test_missing", str(tmp_path / "nope.json"), str(tmp_path))
    with pytest.raises(DatasetFilesError, match="annotation file not found.*nope.json"):
        check_datasets(["us3l_test_missing"])
    register_us3l_datasets(str(tmp_path / "no_datasets_here"))
    with pytest.raises(DatasetFilesError, match="US3L_DATASETS"):
        check_datasets(["us3l_shapes_train"])
    with pytest.raises(ValueError, match="not registered"):
        check_datasets(["no_such_dataset"])


def test_coco_json_by_path_and_coco_hint(tiny_coco):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    register_coco_json("us3l_test_by_path", tiny_coco["val_json"], tiny_coco["val_images"])
    check_datasets(["us3l_test_by_path"])
    records = DatasetCatalog.get("us3l_test_by_path")
    assert len(records) == tiny_coco["num_val"]
    assert MetadataCatalog.get("us3l_test_by_path").thing_classes == [c["name"] for c in tiny_coco["categories"]]
    coco_json = MetadataCatalog.get("coco_2017_val").json_file  # Detectron2's built-in COCO registration
    if not os.path.isfile(coco_json):
        with pytest.raises(DatasetFilesError, match="DETECTRON2_DATASETS"):
            check_datasets(["coco_2017_val"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_multi_process_launch_without_gpus_is_a_clear_error():
    from us3l.d2.engine import run

    with pytest.raises(SystemExit, match="need CUDA GPUs"):
        run(["--num-gpus", "2", "--config-file", CONFIG])


def test_batched_evaluation_gives_the_same_metrics(trained):
    """TEST.IMS_PER_BATCH (the tiny configs batch 8): one loader batch holds the whole val split, and the COCO
    metrics equal those of one image at a time (the images are of one size, so nothing is padded differently)."""
    from us3l.d2.evaluation import build_test_loader

    register_us3l_datasets(trained["tiny"]["datasets_dir"])  # another test points the catalog elsewhere
    model = US3LTrainer.build_model(trained["cfg"])
    US3LCheckpointer(model).resume_or_load(os.path.join(trained["out"], "model_final.pth"), resume=False)
    metrics = {}
    for batch in (1, 8):
        cfg = trained["cfg"].clone()
        cfg.defrost()
        cfg.TEST.IMS_PER_BATCH = batch
        cfg.OUTPUT_DIR = str(trained["folder"] / f"eval_batch{batch}")
        sizes = [len(b) for b in build_test_loader(cfg, cfg.DATASETS.TEST[0])]
        assert sizes == ([1] * trained["tiny"]["num_val"] if batch == 1 else [trained["tiny"]["num_val"]])
        metrics[batch] = US3LTrainer.test(cfg, model)
    assert metrics[1]["w0.50/bbox"]["AP50"] > 0  # something was detected, so the comparison means something
    for key, values in metrics[1].items():
        for k, v in values.items():
            assert metrics[8][key][k] == pytest.approx(v, abs=1e-6, nan_ok=True), (key, k)
    cfg = trained["cfg"].clone()
    cfg.defrost()
    cfg.TEST.IMS_PER_BATCH = 0
    with pytest.raises(ValueError, match="TEST.IMS_PER_BATCH"):
        build_test_loader(cfg, cfg.DATASETS.TEST[0])
