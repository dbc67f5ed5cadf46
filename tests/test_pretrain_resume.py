"""Exact resume: a run stopped mid-epoch and resumed ends bitwise equal to an uninterrupted run (CPU)."""
import os

import torch
from ckpt_helpers import ROOT
from pretrain_helpers import TINY, tiny_overrides

from us3l.checkpoint import load_backbone
from us3l.engine.config import load_config
from us3l.engine.trainer import pretrain


def overrides(root, *extra):
    # 32 images, batch 8: 4 iterations per epoch; 6 iterations cross an epoch boundary and all dynamic stages
    return tiny_overrides(root, "train.iterations=6", "sampling.dynamic=true", "group_reg.warmup_epochs=0.5",
                          "method.ema_schedule=cosine", *extra)


def tensors(obj, prefix=""):
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from tensors(v, f"{prefix}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from tensors(v, f"{prefix}.{i}")


def assert_bitwise_equal(a, b):
    ta, tb = dict(tensors(a)), dict(tensors(b))
    assert ta.keys() == tb.keys()
    for k in ta:
        assert ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]), f"{k} differs"
    return len(ta)


def test_exact_resume_mid_epoch(tiny_cls, tmp_path):
    root = tiny_cls["root"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    s = pretrain(load_config(TINY, overrides(root, "train.checkpoint_every=0")), str(full))
    assert s["iterations_done"] == 6 and s["optimizer_steps"] == s["forward_backward_passes"]  # per-width steps
    # "killed" after 3 iterations (mid-epoch), with periodic checkpoints and keep-last 2
    s = pretrain(load_config(TINY, overrides(root, "train.stop_after=3", "train.checkpoint_every=1",
                                             "train.keep_last=2")), str(cut))
    assert s["stopped"] == "stop_after" and s["iterations_done"] == 3 and not (cut / "final.pth").exists()
    assert sorted(p for p in os.listdir(cut) if p.startswith("ckpt_")) == ["ckpt_00000002.pth", "ckpt_00000003.pth"]
    mid = torch.load(str(cut / "last.pth"), map_location="cpu", weights_only=True)
    assert mid["progress"] == {"iteration": 3, "epoch": 0, "batch_in_epoch": 3, "total": 6, "world_size": 1}
    s = pretrain(load_config(TINY, overrides(root, "train.checkpoint_every=1", "train.keep_last=2")), str(cut),
                 resume=True)
    assert s["iterations_done"] == 6 and s["steps_timed"] == 3
    a = torch.load(str(full / "final.pth"), map_location="cpu", weights_only=True)
    b = torch.load(str(cut / "final.pth"), map_location="cpu", weights_only=True)
    for key in ("model", "teacher", "optimizer"):
        assert assert_bitwise_equal(a[key], b[key]) > 0
    # the comparison can fail: training really moved the weights after the stop point
    assert not torch.equal(a["model"]["backbone.conv1.weight"], mid["model"]["backbone.conv1.weight"])
    # the backbone loader reads the pre-training checkpoint
    state, meta = load_backbone(str(full / "final.pth"))
    assert meta["arch"] == "resnet18" and meta["method"] == "us3l" and "conv1.weight" in state
    assert torch.equal(state["layer4.1.conv2.weight"], a["model"]["backbone.layer4.1.conv2.weight"])


def test_accumulate_mode_steps_once_per_iteration(tiny_cls, tmp_path):
    outer = torch.get_num_threads()
    torch.set_num_threads(2)  # differs from the run's train.num_threads=1 (scripts/test.sh runs on one thread)
    try:
        s = pretrain(load_config(TINY, overrides(tiny_cls["root"], "sampling.step_mode=accumulate",
                                                 "train.iterations=3", "sampling.dynamic=false",
                                                 "method.name=simsiam_inplace", "train.checkpoint_every=0",
                                                 "train.num_threads=1")), str(tmp_path / "acc"))
        assert torch.get_num_threads() == 2  # train.num_threads held for the run only
    finally:
        torch.set_num_threads(outer)
    assert s["optimizer_steps"] == 3 and s["forward_backward_passes"] == 9


def test_sigterm_saves_and_stops(tiny_cls, tmp_path):
    """A preempted run (SIGTERM) finishes its iteration, writes last.pth and exits with status 3."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "sig"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, os.path.join(ROOT, "tools", "pretrain.py"), "--config", TINY, "--output-dir", str(out),
           *overrides(tiny_cls["root"], "train.iterations=200", "train.log_every=1", "train.checkpoint_every=0")]
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ((out / "log.txt").exists() and "it 1/200" in (out / "log.txt").read_text()):
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 3, err[-2000:]
    ck = torch.load(str(out / "last.pth"), map_location="cpu", weights_only=True)
    assert 1 <= ck["progress"]["iteration"] < 200 and not (out / "final.pth").exists()
