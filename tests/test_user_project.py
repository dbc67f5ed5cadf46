"""A framework user's own project, built from the README alone, outside the repository.

Every ``python`` / ``yaml`` block of the README starts with ``# FILE: what it is``; the blocks are written to a
folder outside the repository as those files and run as written. The frameworks' STOCK base configs are copied
beside them (Detectron2's ``model_zoo/configs/Base-RCNN-FPN.yaml``; MMDetection's through ``mmdet::``), the
pre-trained backbone is a real US3L ResNet-50 converted by the README's tools, and the only additions are the
tiny-data settings, in a second config whose base is the README's. What must hold: the README's trainers load
every backbone tensor and their loss falls; Detectron2's stock ``DefaultTrainer`` and mmengine's stock
``load_from`` stop with an error naming the loader that works (they would skip every narrower tensor); a stock
Detectron2 input convention stops the run before training, naming the keys.
"""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from ckpt_helpers import us_r50_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADER = re.compile(r"^# (\S+\.(?:py|yaml)):")


def readme_blocks() -> dict[str, str]:
    """``{file name: text}`` of the README's python / yaml blocks; a block without the header fails the test."""
    text = open(os.path.join(ROOT, "README.md")).read()
    out = {}
    for lang, block in re.findall(r"```(python|yaml)\n(.*?)```", text, flags=re.S):
        m = HEADER.match(block)
        assert m, f"a README {lang} block has no '# FILE: ...' first line, so no test runs it:\n{block[:200]}"
        assert m.group(1) not in out, f"two README blocks are named {m.group(1)}"
        out[m.group(1)] = block
    return out


# the README block -> the test that runs it
RUN_BY = {
    "core_api.py": "test_core_api_example",
    "my_us3l_config.yaml": "test_d2_readme_project_trains",
    "train_mine.py": "test_d2_readme_project_trains",
    "my_us3l_mmdet_config.py": "test_mmdet_readme_project_trains",
    "train_mine_mmdet.py": "test_mmdet_readme_project_trains",
    "d2_widths.py": "test_python_api_example",
    "mmdet_widths.py": "test_python_api_example",
}


def test_every_readme_block_is_run():
    assert set(readme_blocks()) == set(RUN_BY), "README blocks and the tests that run them disagree"


def _run(argv, cwd, datasets_dir, timeout=900):
    env = dict(os.environ, OMP_NUM_THREADS="1", US3L_DATASETS=str(datasets_dir))
    env.pop("PYTHONPATH", None)  # the installed package, as a user has it
    return subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_coco):
    """The user's folder: the README's files, the stock base config, the converted US3L ResNet-50 files."""
    import detectron2

    cwd = tmp_path_factory.mktemp("my_project")
    for name, text in readme_blocks().items():
        (cwd / name).write_text(text)
    zoo = os.path.join(os.path.dirname(detectron2.__file__), "model_zoo", "configs", "Base-RCNN-FPN.yaml")
    shutil.copy(zoo, cwd / "Base-RCNN-FPN.yaml")
    src, _ = us_r50_checkpoint()  # calibrated at 1.0, 0.5, 0.25
    for tool, dst in (("convert_pretrain_to_d2.py", "us3l_r50.pkl"),
                      ("convert_pretrain_to_mmdet.py", "us3l_r50_mmdet.pth")):
        r = _run([os.path.join(ROOT, "tools", tool), src, dst], cwd, tiny_coco["datasets_dir"])
        assert r.returncode == 0, r.stderr[-2000:]
    return cwd, tiny_coco


def test_core_api_example(project):
    cwd, coco = project
    r = _run(["core_api.py"], cwd, coco["datasets_dir"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "parameters at width 0.5" in r.stdout


# ------------------------------------------------------------------------------------------------ Detectron2
D2_TINY = """_BASE_: "my_us3l_config.yaml"
MODEL:
  DEVICE: "cpu"
  ANCHOR_GENERATOR:
    SIZES: [[8], [16], [32], [64], [128]]
  RPN:
    BATCH_SIZE_PER_IMAGE: 64
    PRE_NMS_TOPK_TRAIN: 400
    POST_NMS_TOPK_TRAIN: 200
    PRE_NMS_TOPK_TEST: 200
    POST_NMS_TOPK_TEST: 100
  ROI_HEADS:
    NUM_CLASSES: 4
    BATCH_SIZE_PER_IMAGE: 32
DATASETS:
  TRAIN: ("us3l_shapes_train",)
  TEST: ("us3l_shapes_val",)
INPUT:
  MIN_SIZE_TRAIN: (64,)
  MAX_SIZE_TRAIN: 128
  MIN_SIZE_TEST: 64
  MAX_SIZE_TEST: 128
SOLVER:
  IMS_PER_BATCH: 4
  BASE_LR: 0.01
  STEPS: ()
  MAX_ITER: 40
  WARMUP_ITERS: 5
  CHECKPOINT_PERIOD: 1000
TEST:
  DETECTIONS_PER_IMAGE: 20
DATALOADER:
  NUM_WORKERS: 0
"""


def _losses(metrics_json: str, key: str) -> list[float]:
    rows = [json.loads(line) for line in open(metrics_json) if line.strip()]
    return [r[key] for r in rows if key in r]


def _falls(losses: list[float]) -> bool:
    k = max(2, len(losses) // 4)
    return sum(losses[-k:]) / k < 0.8 * sum(losses[:k]) / k


def test_d2_readme_project_trains(project):
    cwd, coco = project
    (cwd / "tiny.yaml").write_text(D2_TINY)
    r = _run(["train_mine.py", "tiny.yaml", "OUTPUT_DIR", "out_d2"], cwd, coco["datasets_dir"])
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-4000:]
    report = re.search(r"load report \(the US3L resnet50 backbone .* at width 0\.5.*?\): loaded (\d+) tensors "
                       r"\((\d+) sliced.*?\), 0 missing, 0 unexpected, 0 shape-mismatched", log)
    assert report, log[-4000:]
    assert int(report.group(1)) > 300 and int(report.group(2)) > 100  # every trunk tensor; weights sliced from 1.0
    losses = _losses(str(cwd / "out_d2" / "metrics.json"), "total_loss")
    assert len(losses) >= 10 and _falls(losses), losses  # logged every 2 iterations in a 40-iteration run
    assert "Evaluation results for bbox" in log  # the final COCO evaluation ran
    assert (cwd / "out_d2" / "model_final.pth").is_file()


def test_d2_stock_trainer_stops_naming_the_loader(project):
    """The same project with Detectron2's own DefaultTrainer: its checkpointer would drop every tensor at 0.5."""
    cwd, coco = project
    (cwd / "tiny.yaml").write_text(D2_TINY)
    script = (cwd / "train_mine.py").read_text()
    stock = script.replace("import us3l.d2\n", "import us3l.d2\nfrom detectron2.engine import DefaultTrainer\n")
    stock = stock.replace("us3l.d2.US3LTrainer(cfg)", "DefaultTrainer(cfg)")
    assert "DefaultTrainer(cfg)" in stock and "US3LTrainer(" not in stock
    (cwd / "train_stock.py").write_text(stock)
    r = _run(["train_stock.py", "tiny.yaml", "OUTPUT_DIR", "out_stock"], cwd, coco["datasets_dir"])
    assert r.returncode != 0
    assert "CheckpointError" in r.stderr and "US3LCheckpointer" in r.stderr and "missing" in r.stderr, r.stderr[-3000:]
    assert not (cwd / "out_stock" / "model_final.pth").exists()
    metrics = cwd / "out_stock" / "metrics.json"
    assert not metrics.exists() or metrics.stat().st_size == 0  # stopped before the first iteration


@pytest.mark.parametrize("override, names", [
    (["INPUT.FORMAT", "BGR"], ["INPUT.FORMAT"]),
    (["MODEL.PIXEL_MEAN", "[103.53, 116.28, 123.675]", "MODEL.PIXEL_STD", "[1.0, 1.0, 1.0]"],
     ["MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD"]),
    (["MODEL.RESNETS.STRIDE_IN_1X1", "True"], ["MODEL.RESNETS.STRIDE_IN_1X1"]),
], ids=["bgr", "msra-normalisation", "stride-in-1x1"])
def test_d2_stock_input_conventions_stop_before_training(project, override, names):
    """Detectron2's stock values for the MSRA weights, left in a config that loads a US3L backbone."""
    cwd, coco = project
    (cwd / "tiny.yaml").write_text(D2_TINY)
    r = _run(["train_mine.py", "tiny.yaml", "OUTPUT_DIR", "out_conv", *override], cwd, coco["datasets_dir"])
    assert r.returncode != 0
    assert "is a US3L backbone, but the config does not feed it what it was pre-trained on" in r.stderr
    error = r.stderr.strip().splitlines()[-1]
    for name in names:
        assert re.search(rf"set {re.escape(name)}|and {re.escape(name)}", error), error
    assert not (cwd / "out_conv" / "model_final.pth").exists()


# ---------------------------------------------------------------------------------------------- MMDetection
MMDET_TINY = """_base_ = ['./my_us3l_mmdet_config.py']
data_root = '{root}/'
metainfo = dict(classes=('circle', 'square', 'triangle', 'cross'))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(batch_size=4, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root, metainfo=metainfo,
                                     ann_file='annotations/instances_train.json', data_prefix=dict(img='train/'),
                                     pipeline=train_pipeline))
val_dataloader = None
val_evaluator = None
val_cfg = None
test_dataloader = None
test_evaluator = None
test_cfg = None
train_cfg = dict(max_epochs=10, val_interval=100)
param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=20)]
# clipped as MMDetection's single-stage configs clip: batch 4 with BN trained diverged after 35 iterations (seed 0)
optim_wrapper = dict(optimizer=dict(lr=0.005), clip_grad=dict(max_norm=35, norm_type=2))
model = dict(
    rpn_head=dict(anchor_generator=dict(scales=[4])),
    roi_head=dict(bbox_head=dict(num_classes=4), mask_head=dict(num_classes=4)),
    train_cfg=dict(rpn=dict(sampler=dict(num=64)), rpn_proposal=dict(nms_pre=400, max_per_img=200),
                   rcnn=dict(sampler=dict(num=32))))
default_hooks = dict(logger=dict(interval=2), checkpoint=dict(interval=100))
env_cfg = dict(dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0)  # the loss curve the test reads is the same run after run
"""


def _mmdet_losses(work_dir) -> list[float]:
    found = [os.path.join(d, f) for d, _, fs in os.walk(work_dir) for f in fs if f == "scalars.json"]
    assert found, f"no scalars.json under {work_dir}"
    rows = [json.loads(line) for line in open(found[0]) if line.strip()]
    return [r["loss"] for r in rows if "loss" in r]


def test_mmdet_readme_project_trains(project):
    cwd, coco = project
    (cwd / "tiny.py").write_text(MMDET_TINY.format(root=coco["root"]) + "work_dir = 'work_mmdet'\n")
    r = _run(["train_mine_mmdet.py", "tiny.py"], cwd, coco["datasets_dir"])
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-4000:]
    m = re.search(r"US3LResNet\(depth=50, width_mult=0\.5\): loaded us3l_r50_mmdet\.pth at width 0\.5 .*?: "
                  r"loaded (\d+) tensors \((\d+) sliced.*?\), 0 missing, 0 unexpected, 0 shape-mismatched", log)
    assert m, log[-4000:]
    assert int(m.group(1)) > 300 and int(m.group(2)) > 100
    losses = _mmdet_losses(cwd / "work_mmdet")
    assert len(losses) >= 10 and _falls(losses), losses


def test_mmdet_stock_load_from_stops_naming_init_cfg(project):
    """mmengine's own ``load_from`` with the US3L file (no backbone init_cfg): it would skip every narrower tensor."""
    cwd, coco = project
    (cwd / "tiny.py").write_text(MMDET_TINY.format(root=coco["root"]))
    (cwd / "tiny_load_from.py").write_text(
        "_base_ = ['./tiny.py']\nwork_dir = 'work_load_from'\nload_from = 'us3l_r50_mmdet.pth'\n"
        "model = dict(backbone=dict(init_cfg=None))\n")
    r = _run(["train_mine_mmdet.py", "tiny_load_from.py"], cwd, coco["datasets_dir"])
    assert r.returncode != 0
    assert "CheckpointError" in r.stderr and "init_cfg=dict(type='Pretrained'" in r.stderr, r.stderr[-3000:]
    assert "of another shape" in r.stderr
    found = [f for _, _, fs in os.walk(cwd / "work_load_from") for f in fs if f.endswith(".pth")]
    assert not found  # no checkpoint trained from random weights


# ------------------------------------------------------------------------- the slimmable detector in Python
D2_SLIM = """_BASE_: "{root}/projects/segmentation/configs/mask_rcnn_US-R50_FPN_slimmable_tiny.yaml"
MODEL:
  WEIGHTS: ""
  DEVICE: "cpu"
  RESNETS: {{DEPTH: 18, RES2_OUT_CHANNELS: 64}}
  US3L: {{CALIBRATION: {{NUM_BATCHES: 2}}}}
SOLVER: {{MAX_ITER: 2}}
DATALOADER: {{NUM_WORKERS: 0}}
"""
MMDET_SLIM = """_base_ = ['{root}/projects/segmentation/mmdet_configs/mask-rcnn_us-r50_fpn_slimmable_tiny.py']
model = dict(backbone=dict(depth=18, init_cfg=None), neck=dict(in_channels=[64, 128, 256, 512]),
             train_cfg=dict(rpn_proposal=dict(max_per_img=100), rcnn=dict(sampler=dict(num=64))),
             test_cfg=dict(rpn=dict(nms_pre=200, max_per_img=50)))
train_cfg = dict(max_epochs=1)
train_dataloader = dict(batch_size=2, dataset=dict(indices=4))
default_hooks = dict(checkpoint=dict(interval=1))
"""


def _detections(stdout: str) -> dict[float, list[int]]:
    out = {}
    for w, n in re.findall(r"^width ([\d.]+): (\d+) detections$", stdout, flags=re.M):
        out.setdefault(float(w), []).append(int(n))
    return out


@pytest.fixture(scope="module")
def slim_d2(project):
    """A slimmable detector trained by the repository's entry point (2 iterations, calibrated at 3 widths)."""
    cwd, coco = project
    (cwd / "slim_r18.yaml").write_text(D2_SLIM.format(root=ROOT))
    r = _run([os.path.join(ROOT, "projects", "segmentation", "train_net.py"), "--config-file", "slim_r18.yaml",
              "OUTPUT_DIR", "slim_d2"], cwd, coco["datasets_dir"])
    assert r.returncode == 0, r.stderr[-3000:]
    return "slim_r18.yaml", "slim_d2/model_final.pth"


@pytest.fixture(scope="module")
def slim_mmdet(project):
    cwd, coco = project
    (cwd / "slim_r18_mmdet.py").write_text(MMDET_SLIM.format(root=ROOT))
    r = _run([os.path.join(ROOT, "projects", "segmentation", "mmdet_train.py"), "slim_r18_mmdet.py", "--work-dir",
              "slim_mmdet"], cwd, coco["datasets_dir"])
    assert r.returncode == 0, r.stderr[-3000:]
    return "slim_r18_mmdet.py", "slim_mmdet/epoch_1.pth"


def _first_val_image(coco) -> str:
    return os.path.join(coco["val_images"], sorted(os.listdir(coco["val_images"]))[0])


API_EXAMPLES = {"d2": ("d2_widths.py", "box AP", ["model_calibrated.pth"]),
                "mmdet": ("mmdet_widths.py", "box mAP", ["model_calibrated.pth", "plain_w0.50.pth", "plain_w0.50.py"])}


@pytest.mark.parametrize("framework", sorted(API_EXAMPLES))
def test_python_api_example(project, slim_d2, slim_mmdet, framework):
    """The README's d2_widths.py / mmdet_widths.py on a slimmable checkpoint trained by the repository's entry point:
    calibration, evaluation at every width, save, export, widths switched in the framework's own predictor."""
    cwd, coco = project
    script, metric, written = API_EXAMPLES[framework]
    checkpoint = slim_d2 if framework == "d2" else slim_mmdet
    r = _run([script, *checkpoint, _first_val_image(coco)], cwd, coco["datasets_dir"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.findall(rf"^width ([\d.]+): {metric}", r.stdout, flags=re.M) == ["1.0", "0.5", "0.25"], r.stdout
    found = _detections(r.stdout)
    assert sorted(found) == [0.25, 0.5, 1.0] and len(found[0.5]) == 2, r.stdout
    assert found[0.5][0] == found[0.5][1]  # back at a width after other widths: the same detections
    assert all((cwd / name).is_file() for name in written)


@pytest.fixture(scope="module")
def own_set(project):
    """The user's own COCO-format set, under another name and folder than us3l_shapes (a copy of the val split
    with fewer images, so its AP differs from the embedded set's)."""
    cwd, coco = project
    images = cwd / "mine" / "images"
    shutil.copytree(coco["val_images"], images)
    doc = json.load(open(coco["val_json"]))
    keep = {im["id"] for im in doc["images"][:4]}
    for im in doc["images"][4:]:
        os.remove(images / im["file_name"])
    doc = dict(doc, images=doc["images"][:4], annotations=[a for a in doc["annotations"] if a["image_id"] in keep])
    (cwd / "mine" / "instances.json").write_text(json.dumps(doc))
    return "mine", str(cwd / "mine" / "instances.json"), str(images)


@pytest.mark.parametrize("framework", ["d2", "mmdet"])
def test_eval_widths_on_the_users_own_set(project, slim_d2, slim_mmdet, own_set, framework):
    """tools/eval_widths.py --dataset NAME JSON IMAGE_ROOT, as train_net.py has: the checkpoint evaluated on it."""
    cwd, coco = project
    config, weights = slim_d2 if framework == "d2" else slim_mmdet
    out = cwd / f"ev_{framework}"
    r = _run([os.path.join(ROOT, "tools", "eval_widths.py"), weights, "--framework", framework, "--config", config,
              "--widths", "0.5", "--output-dir", str(out), "--calibrate-batches", "2", "--dataset", *own_set], cwd,
             coco["datasets_dir"])
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    rows = json.load(open(out / "results.json"))["rows"]
    assert [row["width"] for row in rows] == [0.5] and rows[0]["box_AP"] is not None
    log = r.stdout + r.stderr
    if framework == "d2":  # Detectron2's loader read the user's file (4 images, not the embedded set's 8)
        assert f"Loaded 4 images in COCO format from {own_set[1]}" in log, log[-3000:]
    else:
        assert f"on 4 images of {own_set[1]}" in log, log[-3000:]
    bad = _run([os.path.join(ROOT, "tools", "eval_widths.py"), weights, "--framework", framework, "--config", config,
                "--widths", "0.5", "--output-dir", str(cwd / "ev_bad"), "--dataset", "mine", "missing.json",
                own_set[2]], cwd, coco["datasets_dir"])
    assert bad.returncode == 2 and "annotation file not found" in bad.stderr and not (cwd / "ev_bad").exists()


@pytest.fixture(scope="module")
def slim_mmdet_calibrated(project, slim_mmdet):
    """MMDetection's training calibrates nothing: tools/calibrate_detector.py at the demo's widths."""
    cwd, coco = project
    config, weights = slim_mmdet
    r = _run([os.path.join(ROOT, "tools", "calibrate_detector.py"), weights, "slim_mmdet/calibrated.pth", "--config",
              config, "--widths", "1.0", "0.5", "0.25", "--num-batches", "2"], cwd, coco["datasets_dir"])
    assert r.returncode == 0, r.stderr[-3000:]
    return config, "slim_mmdet/calibrated.pth"


def _reference_detections(framework, cwd, config, weights, image, width, datasets_dir):  # in this process
    """The framework's own inference API at ``width``, loaded independently of tools/demo.py (Detectron2's
    DefaultPredictor with its stock checkpointer; MMDetection's init_detector + inference_detector)."""
    import us3l

    if framework == "d2":
        from detectron2.data.detection_utils import read_image
        from detectron2.engine import DefaultPredictor

        from us3l.d2 import load_config, register_us3l_datasets

        register_us3l_datasets(str(datasets_dir))
        cfg = load_config(str(cwd / config), ["MODEL.WEIGHTS", str(cwd / weights), "MODEL.DEVICE", "cpu"])
        predictor = DefaultPredictor(cfg)
        us3l.set_width(predictor.model, width)
        inst = predictor(read_image(image, format="BGR"))["instances"]
        return inst.pred_boxes.tensor, inst.scores
    from mmdet.apis import inference_detector, init_detector

    import us3l.mmdet  # noqa: F401

    model = init_detector(str(cwd / config), str(cwd / weights), device="cpu")
    us3l.set_width(model, width)
    pred = inference_detector(model, image).pred_instances
    return pred.bboxes, pred.scores


@pytest.mark.parametrize("framework", ["d2", "mmdet"])
def test_demo_shows_every_width(project, slim_d2, slim_mmdet_calibrated, framework, monkeypatch):
    """tools/demo.py: one panel per (image, width), titled with latency and GFLOPs; the detections it draws are
    the framework's own inference at that width."""
    import torch
    from PIL import Image

    cwd, coco = project
    config, weights = slim_d2 if framework == "d2" else slim_mmdet_calibrated
    images = [os.path.join(coco["val_images"], n) for n in sorted(os.listdir(coco["val_images"]))[:2]]
    out = cwd / f"grid_{framework}.png"
    r = _run([os.path.join(ROOT, "tools", "demo.py"), weights, *images, "--config", config, "--widths", "1.0", "0.5",
              "0.25", "--output", str(out), "--score-thresh", "0.0", "--runs", "1"], cwd, coco["datasets_dir"])
    assert r.returncode == 0, r.stderr[-3000:]
    with Image.open(out) as png:
        assert png.size[0] > 3 * 200 and png.size[1] > 2 * 200  # three panels wide, two tall
    panels = json.load(open(out.with_suffix(".json")))["panels"]
    assert [(os.path.basename(p["image"]), p["width"]) for p in panels] == [
        (os.path.basename(im), w) for im in images for w in (1.0, 0.5, 0.25)]
    for im in images:  # a narrower detector costs less
        gflops = [p["gflops"] for p in panels if p["image"] == im]
        assert gflops[0] > gflops[1] > gflops[2] > 0
    panel = next(p for p in panels if p["image"] == images[0] and p["width"] == 0.5)
    monkeypatch.setenv("US3L_DATASETS", str(coco["datasets_dir"]))
    boxes, scores = _reference_detections(framework, cwd, config, weights, images[0], 0.5, coco["datasets_dir"])
    assert len(panel["scores"]) == len(scores) > 0
    assert torch.allclose(torch.tensor(panel["boxes"]), boxes.float(), atol=1e-3)
    assert torch.allclose(torch.tensor(panel["scores"]), scores.float(), atol=1e-4)
