"""MMDetection fine-tuning resumes exactly: a run killed with SIGKILL after an epoch's last iteration or in the
middle of an epoch, and continued with --resume, ends with the weights of the run that was never stopped, bit for
bit, for the slimmable Mask R-CNN (sandwich steps) and a plain Faster R-CNN. mmengine saves model, optimizer,
schedulers and the epoch; its data order is a function of seed and epoch, the sandwich widths of seed and
iteration; what it does not save are the RNG states behind random flips and RoI / anchor sampling
(us3l.mmdet.RNGStateHook), nor where in an epoch the run was (us3l.mmdet.loops). Control: the same resume without
the RNG states ends elsewhere."""
import os

import mmcv.ops  # noqa: F401
import mmdet  # noqa: F401
import pytest
import torch
from ckpt_helpers import ROOT

from us3l.checkpoint.safe_load import load_torch
from us3l.mmdet.engine import train_main

SEG = os.path.join(ROOT, "projects", "segmentation", "mmdet_configs")
DET = os.path.join(ROOT, "projects", "detection", "mmdet_configs")
COMMON = ["train_dataloader.batch_size=2", "train_dataloader.dataset.indices=4", "default_hooks.checkpoint.interval=1",
          "default_hooks.logger.interval=1", "randomness.seed=3", "train_cfg.val_interval=100",
          "model.backbone.init_cfg=None", "model.train_cfg.rpn_proposal.max_per_img=100",
          "model.train_cfg.rcnn.sampler.num=64"]
CASES = {
    "slimmable": [os.path.join(SEG, "mask-rcnn_us-r50_fpn_slimmable_tiny.py"), "--cfg-options", *COMMON,
                  "model.backbone.depth=18", "model.neck.in_channels=[64,128,256,512]"],
    "plain": [os.path.join(DET, "faster-rcnn_us-r50_fpn_1x_coco_tiny.py"), "--width", "0.5", "--cfg-options", *COMMON],
}


@pytest.fixture(autouse=True)
def datasets_env(tiny_coco, monkeypatch):
    monkeypatch.setenv("US3L_DATASETS", tiny_coco["datasets_dir"])


def _train(case, work, epochs, resume=False):
    args = [*CASES[case][:1], "--work-dir", str(work), *(["--resume"] if resume else []), *CASES[case][1:],
            f"train_cfg.max_epochs={epochs}"]
    runner = train_main(args)
    model = getattr(runner.model, "module", runner.model)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# -- killed in mid-epoch (a real SIGKILL), resumed from an iteration checkpoint --------------------------------------
KILL_SCRIPT = """
import os, signal, sys
from mmdet.registry import HOOKS
from mmengine.hooks import Hook
from us3l.mmdet import engine

KILL_AFTER = int(os.environ.get("KILL_AFTER", "0"))
if os.environ.get("SKIP_RNG_RESTORE"):  # the control: a resume that does not restore the saved RNG states
    from us3l.mmdet import RNGStateHook

    RNGStateHook.after_load_checkpoint = lambda self, runner, checkpoint: None


@HOOKS.register_module()
class KillAfter(Hook):
    priority = "LOWEST"  # after the checkpoint hook: iter_K.pth and last_checkpoint are on disk

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 == KILL_AFTER:
            os.kill(os.getpid(), signal.SIGKILL)


build_cfg = engine.build_cfg


def with_kill(args):
    cfg = build_cfg(args)
    cfg.custom_hooks = [*cfg.custom_hooks, dict(type="KillAfter")]
    return cfg


engine.build_cfg = with_kill


engine.train_main(sys.argv[1:])
"""
# 6 images in batches of 2: 3 iterations per epoch, 2 epochs, the kill after iteration 4 (one batch into epoch 2).
# Slimmable: a checkpoint every 2 iterations (iter_2, iter_4, iter_6), so the resume is in mid-epoch (one batch
# replayed); plain: every 3 (iter_3, iter_6), so it resumes at the epoch boundary (nothing replayed)
MID_EPOCH = ["train_dataloader.dataset.indices=6", "default_hooks.checkpoint.by_epoch=False", "train_cfg.max_epochs=2"]
EVERY = {"slimmable": 2, "plain": 3}


def _run(case, work, tmp_path, kill_after=0, resume=False, workers=0, skip_rng_restore=False):
    import subprocess
    import sys

    script = tmp_path / "train_kill.py"
    script.write_text(KILL_SCRIPT)
    args = [sys.executable, str(script), *CASES[case][:1], "--work-dir", str(work), *(["--resume"] if resume else []),
            *CASES[case][1:], *MID_EPOCH, f"default_hooks.checkpoint.interval={EVERY[case]}",
            f"train_dataloader.num_workers={workers}",
            "train_dataloader.persistent_workers=False"]
    env = dict(os.environ, KILL_AFTER=str(kill_after), OMP_NUM_THREADS="1",
               SKIP_RNG_RESTORE="1" if skip_rng_restore else "",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=ROOT)


def _weights(path):
    return load_torch(str(path))["state_dict"]


@pytest.mark.parametrize("case,workers", [("slimmable", 0), ("plain", 1)])
def test_sigkill_then_resume_ends_where_the_uninterrupted_run_ends(case, workers, tmp_path):
    """Plain: resumed from the checkpoint the kill left last (iter_3, the end of epoch 1). Slimmable: that last
    checkpoint (iter_4) was damaged by the kill, so --resume says so and falls back to iter_2, in mid-epoch 1 (2 of
    3 batches replayed); then the control."""
    straight = _run(case, tmp_path / "straight", tmp_path, workers=workers)
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = _run(case, tmp_path / "killed", tmp_path, kill_after=4, workers=workers)
    assert killed.returncode == -9, killed.stderr[-3000:]
    latest = "iter_4.pth" if case == "slimmable" else "iter_3.pth"
    names = sorted(p.name for p in (tmp_path / "killed").glob("*.pth"))
    assert names == (["iter_2.pth", "iter_4.pth"] if case == "slimmable" else ["iter_3.pth"])
    assert (tmp_path / "killed" / "last_checkpoint").read_text().strip().endswith(latest)
    assert set(load_torch(str(tmp_path / "killed" / latest))["meta"]["rng_states"]) == {"current", "epoch_start"}
    if case == "slimmable":  # a save cut short: the last checkpoint is half a file
        data = (tmp_path / "killed" / latest).read_bytes()
        (tmp_path / "killed" / latest).write_bytes(data[: len(data) // 2])
    resumed = _run(case, tmp_path / "killed", tmp_path, resume=True, workers=workers)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    if case == "slimmable":
        assert "iter_4.pth (named in last_checkpoint) is truncated or corrupt" in log, log[-2000:]
        assert "iter_2.pth, the newest intact checkpoint beside it" in log
        assert "resumed in epoch 1: 2 of 3 batches replayed" in log, log[-2000:]
    else:  # iter_3 ends epoch 1 but mmengine saves it with epoch 0: epoch 1 is replayed whole, then epoch 2 runs
        assert "resumed in epoch 1: 3 of 3 batches replayed" in log, log[-2000:]
    want, got = _weights(tmp_path / "straight" / "iter_6.pth"), _weights(tmp_path / "killed" / "iter_6.pth")
    assert got.keys() == want.keys()
    differ = [k for k in want if not torch.equal(got[k], want[k])]
    assert not differ, f"{len(differ)} of {len(want)} tensors differ, e.g. {differ[:5]}"

    if case != "slimmable":
        return  # the fallback and the control are the same code for every detector: shown once
    # control: the same resume without restoring the saved RNG states ends elsewhere
    for name in ("iter_4.pth", "iter_6.pth"):
        (tmp_path / "killed" / name).unlink()
    (tmp_path / "killed" / "last_checkpoint").write_text(str(tmp_path / "killed" / "iter_2.pth"))
    control = _run(case, tmp_path / "killed", tmp_path, resume=True, workers=workers, skip_rng_restore=True)
    assert control.returncode == 0, control.stderr[-3000:]
    assert "the checkpoint has no RNG states" in control.stdout + control.stderr
    got = _weights(tmp_path / "killed" / "iter_6.pth")
    assert any(not torch.equal(got[k], want[k]) for k in want if k.endswith("weight"))


def test_a_damaged_checkpoint_named_on_the_command_line_or_with_nothing_intact_is_refused_before_anything_is_written(
        tmp_path):
    from us3l.checkpoint import CheckpointError

    work = tmp_path / "work"
    work.mkdir()
    torch.save({"state_dict": {"w": torch.zeros(4096)}, "meta": {"epoch": 1, "iter": 2}}, work / "epoch_1.pth")
    data = (work / "epoch_1.pth").read_bytes()
    (work / "epoch_1.pth").write_bytes(data[: len(data) // 2])
    (work / "last_checkpoint").write_text(str(work / "epoch_1.pth"))
    before = sorted(p.name for p in work.iterdir())
    config = CASES["plain"][0]
    with pytest.raises(CheckpointError, match="no intact checkpoint is beside it.*nothing was written"):
        train_main([config, "--work-dir", str(work), "--resume"])
    with pytest.raises(CheckpointError, match=r"--resume .*epoch_1.pth: the checkpoint is truncated or corrupt"):
        train_main([config, "--work-dir", str(work), "--resume", str(work / "epoch_1.pth")])
    assert sorted(p.name for p in work.iterdir()) == before


def test_saves_are_atomic(tmp_path, monkeypatch):
    """The second epoch's save fails half way (a full disk): no epoch_2.pth appears, epoch_1.pth and
    last_checkpoint stay as they were."""
    import mmengine.runner.runner as mm_runner

    class Boom(Exception):
        pass

    real = mm_runner.save_checkpoint

    def failing_second_save(checkpoint, filename, **kwargs):
        if checkpoint["meta"]["epoch"] == 2:
            with open(filename, "wb") as f:
                f.write(b"PK\x03\x04 half a file")
            raise Boom
        real(checkpoint, filename, **kwargs)

    monkeypatch.setattr(mm_runner, "save_checkpoint", failing_second_save)
    work = tmp_path / "work"
    with pytest.raises(Boom):
        _train("plain", work, 2)
    assert not (work / "epoch_2.pth").exists()
    assert (work / "last_checkpoint").read_text().strip().endswith("epoch_1.pth")
    assert load_torch(str(work / "epoch_1.pth"))["meta"]["epoch"] == 1
