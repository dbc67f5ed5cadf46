"""A framework user's own project, built from the README alone, outside the repository.

Every ``python`` / ``yaml`` block of the README starts with ``# FILE: what it is``; the blocks are written to a
folder outside the repository as those files and run as written. The frameworks' STOCK base configs are copied
beside them (Detectron2's ``model_zoo/configs/Base-RCNN-FPN.yaml``; MMDetection's through ``mmdet::``), the
pre-trained backbone is a real US3L ResNet-50 converted by the README's tools, and the only additions are the
tiny-data settings, in a second config whose base is the README's. What must hold: the README's trainers load
every backbone tensor and their loss falls; Detectron2's stock ``DefaultTrainer`` and mmengine's stock
``load_from`` stop with an error naming the loader that works (they would skip every narrower tensor); a stock
Detectron2 input convention stops the build naming the keys.
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
    "d2_widths.py": "test_d2_python_api_example",
    "mmdet_widths.py": "test_mmdet_python_api_example",
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
    stock = script.replace("from us3l.d2.engine import US3LTrainer", "from detectron2.engine import DefaultTrainer")
    stock = stock.replace("US3LTrainer(cfg)", "DefaultTrainer(cfg)")
    assert stock != script and "US3LTrainer" not in stock.split("#")[0]
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
def test_d2_stock_input_conventions_stop_the_build(project, override, names):
    """Detectron2's stock values for the MSRA weights, left in a config that loads a US3L backbone."""
    cwd, coco = project
    (cwd / "tiny.yaml").write_text(D2_TINY)
    r = _run(["train_mine.py", "tiny.yaml", "OUTPUT_DIR", "out_conv", *override], cwd, coco["datasets_dir"])
    assert r.returncode != 0
    assert "is a US3L backbone, but the config does not feed it what it was pre-trained on" in r.stderr
    error = r.stderr.strip().splitlines()[-1]
    for name in names:
        assert re.search(rf"set {re.escape(name)}|and {re.escape(name)}", error), error


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
optim_wrapper = dict(optimizer=dict(lr=0.005))
model = dict(
    rpn_head=dict(anchor_generator=dict(scales=[4])),
    roi_head=dict(bbox_head=dict(num_classes=4), mask_head=dict(num_classes=4)),
    train_cfg=dict(rpn=dict(sampler=dict(num=64)), rpn_proposal=dict(nms_pre=400, max_per_img=200),
                   rcnn=dict(sampler=dict(num=32))))
default_hooks = dict(logger=dict(interval=2), checkpoint=dict(interval=100))
env_cfg = dict(dist_cfg=dict(backend='gloo'))
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


def test_d2_python_api_example(project):
    """A slimmable detector trained by the repository's entry point (2 iterations), then the README's script."""
    cwd, coco = project
    (cwd / "slim_r18.yaml").write_text(D2_SLIM.format(root=ROOT))
    r = _run([os.path.join(ROOT, "projects", "segmentation", "train_net.py"), "--config-file", "slim_r18.yaml",
              "OUTPUT_DIR", "slim_d2"], cwd, coco["datasets_dir"])
    assert r.returncode == 0, r.stderr[-3000:]
    image = os.path.join(coco["val_images"], sorted(os.listdir(coco["val_images"]))[0])
    r = _run(["d2_widths.py", "slim_r18.yaml", "slim_d2/model_final.pth", image], cwd, coco["datasets_dir"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.findall(r"^width ([\d.]+): box AP", r.stdout, flags=re.M) == ["1.0", "0.5", "0.25"], r.stdout
    found = _detections(r.stdout)
    assert sorted(found) == [0.25, 0.5, 1.0] and len(found[0.5]) == 2, r.stdout
    assert found[0.5][0] == found[0.5][1]  # back at a width after other widths: the same detections
    assert (cwd / "model_calibrated.pth").is_file()


def test_mmdet_python_api_example(project):
    cwd, coco = project
    (cwd / "slim_r18_mmdet.py").write_text(MMDET_SLIM.format(root=ROOT))
    r = _run([os.path.join(ROOT, "projects", "segmentation", "mmdet_train.py"), "slim_r18_mmdet.py", "--work-dir",
              "slim_mmdet"], cwd, coco["datasets_dir"])
    assert r.returncode == 0, r.stderr[-3000:]
    image = os.path.join(coco["val_images"], sorted(os.listdir(coco["val_images"]))[0])
    r = _run(["mmdet_widths.py", "slim_r18_mmdet.py", "slim_mmdet/epoch_1.pth", image], cwd, coco["datasets_dir"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.findall(r"^width ([\d.]+): box mAP", r.stdout, flags=re.M) == ["1.0", "0.5", "0.25"], r.stdout
    found = _detections(r.stdout)
    assert sorted(found) == [0.25, 0.5, 1.0] and found[0.5][0] == found[0.5][1], r.stdout
    assert (cwd / "plain_w0.50.pth").is_file() and (cwd / "plain_w0.50.py").is_file()
