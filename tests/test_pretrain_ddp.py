"""Distributed pre-training through torchrun: 2 CPU processes (gloo) stay in lockstep and write one checkpoint."""
import json
import os
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_torchrun_two_cpu_processes(tiny_cls, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           os.path.join(ROOT, "tools", "pretrain.py"), "--config", os.path.join(ROOT, "configs", "us3l_tiny_cpu.yaml"),
           "--output-dir", str(out), "model.cifar_stem=false", "data.dataset=imagefolder",
           f"data.root={tiny_cls['root']}", "data.image_size=16", "data.batch_size=4", "method.proj_hidden=32",
           "method.proj_dim=16", "method.pred_hidden=16", "train.progress=false", "train.tensorboard=false",
           "train.num_threads=1", "train.iterations=3", "sampling.dynamic=false", "method.base_loss=moco",
           "train.device=cpu"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    s0 = json.loads((out / "summary.json").read_text())
    s1 = json.loads((out / "summary_rank1.json").read_text())
    assert s0["iterations_done"] == s1["iterations_done"] == 3
    # gradients are averaged over both processes: their weights stay identical
    assert s0["param_checksum"] == s1["param_checksum"]
    ck = torch.load(str(out / "final.pth"), map_location="cpu", weights_only=True)
    assert ck["progress"]["world_size"] == 2
    # both processes saw different images: 32 images / 2 processes / batch 4 = 4 iterations per epoch
    assert "4 it/epoch" in r.stderr and "2 process(es)" in r.stderr
