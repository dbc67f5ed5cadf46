"""MMDetection fine-tuning in 2 CPU processes via torchrun + mmengine's pytorch launcher (gloo)."""
import json
import math
import os
import re
import subprocess
import sys

import mmdet  # noqa: E402,F401
from ports import free_port  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_torchrun_two_processes_shard_data_and_evaluate(tiny_coco, tmp_path):
    work = tmp_path / "work"
    env = dict(os.environ, US3L_DATASETS=tiny_coco["datasets_dir"])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           os.path.join(ROOT, "projects", "detection", "mmdet_train.py"),
           os.path.join(ROOT, "projects", "detection", "mmdet_configs", "faster-rcnn_us-r50_fpn_1x_coco_tiny.py"),
           "--launcher", "pytorch", "--width", "0.25", "--work-dir", str(work), "--cfg-options",
           "model.backbone.init_cfg=None", "model.backbone.depth=18", "train_cfg.max_epochs=1",
           "train_cfg.val_interval=1"]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    log = run.stdout + run.stderr
    assert run.returncode == 0, run.stdout[-3000:] + "\n--- stderr ---\n" + run.stderr[-3000:]
    assert "Distributed training: True" in log and "GPU number: 2" in log  # mmengine's words for world size
    with open(os.path.join(tiny_coco["root"], "annotations", "instances_train.json")) as f:
        coco = json.load(f)
    with_boxes = len({a["image_id"] for a in coco["annotations"]})
    iters = int(re.search(r"Epoch\(train\) \[1\]\[\d+/(\d+)\]", log).group(1))
    assert iters == math.ceil(with_boxes / (4 * 2))  # each process sees half the data (batch 4 each)
    with open(work / "metrics_w0.25.json") as f:
        metrics = json.load(f)
    assert any(k.startswith("w0.25/bbox_mAP") for k in json.dumps(metrics).split('"'))


def test_a_finished_run_closes_its_process_group(tiny_coco, tmp_path, monkeypatch):
    """Left to the interpreter's exit, gloo's threads can abort a process whose run is done (SIGABRT, CI)."""
    import torch.distributed as dist

    from us3l.mmdet.engine import train_main

    for key, value in dict(US3L_DATASETS=tiny_coco["datasets_dir"], RANK="0", LOCAL_RANK="0", WORLD_SIZE="1",
                           MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port())).items():
        monkeypatch.setenv(key, value)
    try:
        runner = train_main([os.path.join(ROOT, "projects", "detection", "mmdet_configs",
                                          "faster-rcnn_us-r50_fpn_1x_coco_tiny.py"),
                             "--launcher", "pytorch", "--width", "0.25", "--work-dir", str(tmp_path), "--cfg-options",
                             "model.backbone.init_cfg=None", "model.backbone.depth=18", "train_cfg.max_epochs=1",
                             "train_cfg.val_interval=2", "train_dataloader.dataset.indices=4"])
        assert runner.distributed and runner.iter == 1  # 4 images, batch 4, in a (one-process) gloo group
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
