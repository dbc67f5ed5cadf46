"""Detectron2 training in 2 CPU processes (gloo): the distributed path (sharded data, DDP, gathered eval)."""
import glob
import json
import os
import subprocess
import sys

import detectron2  # noqa: E402,F401

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_two_gloo_processes_train_and_evaluate(tiny_coco, tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, US3L_DATASETS=tiny_coco["datasets_dir"])
    cmd = [sys.executable, os.path.join(ROOT, "projects", "segmentation", "train_net.py"), "--cpu-processes", "2",
           "--config-file", os.path.join(ROOT, "projects", "segmentation", "configs", "mask_rcnn_US-R50_FPN_tiny.yaml"),
           "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.WEIGHTS", "",
           "MODEL.US3L.WIDTH_MULT", "0.5", "MODEL.US3L.BN_STATS", "reset", "SOLVER.MAX_ITER", "2",
           "SOLVER.IMS_PER_BATCH", "4", "TEST.PRECISE_BN.ENABLED", "False", "OUTPUT_DIR", str(out)]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    logs = {os.path.basename(p): open(p).read() for p in glob.glob(str(out / "log.txt*"))}
    assert "Rank of current process: 0. World size: 2" in logs["log.txt"]
    assert "Rank of current process: 1. World size: 2" in logs["log.txt.rank1"]
    assert "iter: 1" in logs["log.txt"]
    with open(out / "metrics_us3l_shapes_val_w0.50.json") as f:
        metrics = json.load(f)
    assert metrics["width"] == 0.5 and "AP" in metrics["bbox"] and "AP" in metrics["segm"]
    assert (out / "model_final.pth").exists()
