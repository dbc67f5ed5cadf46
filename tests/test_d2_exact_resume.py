"""Detectron2 fine-tuning resumes exactly: a slimmable Mask R-CNN or a plain Faster R-CNN killed with SIGKILL after a
checkpoint and continued with train_net.py --resume (a new process, other RNG states) ends with the same weights,
bit for bit, as the run that was never interrupted (optimizer momentum, data order, augmentations, RoI sampling
and the sandwich widths all replay). In this process: the control (the same resume without the optimizer state in
the checkpoint ends elsewhere) and the fallback from damaged checkpoints."""
import os
import random

import numpy as np
import pytest
import torch
from ckpt_helpers import ROOT

from us3l.checkpoint.io import read_framework_checkpoint

D2_CONFIG = os.path.join(ROOT, "projects", "segmentation", "configs", "mask_rcnn_US-R50_FPN_slimmable_tiny.yaml")
ITERS, PERIOD = 6, 3  # the interruption comes right after model_0000002.pth (iteration 3 of 6)


class _Killed(Exception):
    pass


def _cfg(tiny_coco, out):
    from us3l.d2 import load_config, register_us3l_datasets

    register_us3l_datasets(tiny_coco["datasets_dir"])
    return load_config(D2_CONFIG, [
        "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "SEED", "7", "MODEL.WEIGHTS", "",
        "SOLVER.MAX_ITER", str(ITERS), "SOLVER.STEPS", "(4,)", "SOLVER.CHECKPOINT_PERIOD", str(PERIOD),
        "MODEL.US3L.CALIBRATION.WIDTHS", "[0.25]", "MODEL.US3L.CALIBRATION.NUM_BATCHES", "1",
        "DATALOADER.NUM_WORKERS", "0", "DATASETS.TEST", "()", "TEST.PRECISE_BN.ENABLED", "False",
        "OUTPUT_DIR", str(out)])


def _train(cfg, resume=False, kill_after=None):
    from detectron2.engine import HookBase

    from us3l.d2.sandwich import SlimmableDetectorTrainer

    class Kill(HookBase):
        def after_step(self):
            if self.trainer.iter + 1 == kill_after:
                raise _Killed

    if not resume:  # what train_net.py's default_setup does before the model is built (its random init)
        from detectron2.utils.env import seed_all_rng

        seed_all_rng(cfg.SEED)
    trainer = SlimmableDetectorTrainer(cfg)
    trainer.resume_or_load(resume=resume)
    if kill_after:
        trainer.register_hooks([Kill()])  # after the periodic checkpointer: the checkpoint is on disk
    trainer.train()
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def _other_rng_states():
    """A new process would start from other RNG states than the interrupted one left behind."""
    random.seed(12345)
    np.random.seed(12345)
    torch.manual_seed(12345)


@pytest.fixture(scope="module")
def straight(tiny_coco, tmp_path_factory):
    """(output folder, final weights) of the run that is never interrupted."""
    out = tmp_path_factory.mktemp("straight")
    return out, _train(_cfg(tiny_coco, out))


@pytest.fixture(scope="module")
def uninterrupted(straight):
    return straight[1]


def _interrupted(tiny_coco, out):
    cfg = _cfg(tiny_coco, out)
    with pytest.raises(_Killed):
        _train(cfg, kill_after=PERIOD)
    assert (out / "model_0000002.pth").is_file() and not (out / "model_final.pth").exists()
    _other_rng_states()
    return cfg


# -- killed with a real SIGKILL, continued with train_net.py --resume, as a user runs it -----------------------------
KILL_SCRIPT = """
import os, signal, sys
from detectron2.engine import HookBase
from us3l.d2 import engine
from us3l.d2.trainer import US3LTrainer

KILL_AFTER = int(os.environ.get("KILL_AFTER", "0"))


class KillAfter(HookBase):
    def after_step(self):
        if self.trainer.iter + 1 == KILL_AFTER:
            os.kill(os.getpid(), signal.SIGKILL)


build_hooks = US3LTrainer.build_hooks
US3LTrainer.build_hooks = lambda self: [*build_hooks(self), KillAfter()]  # the slimmable trainer extends these
sys.exit(engine.cli())
"""
R18 = ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "SEED", "7", "MODEL.WEIGHTS", "",
       "SOLVER.MAX_ITER", str(ITERS), "SOLVER.STEPS", "(4,)", "SOLVER.CHECKPOINT_PERIOD", str(PERIOD),
       "DATALOADER.NUM_WORKERS", "0", "DATASETS.TEST", "()", "TEST.PRECISE_BN.ENABLED", "False"]
CASES = {"slimmable": [D2_CONFIG, *R18, "MODEL.US3L.CALIBRATION.WIDTHS", "[0.25]",
                       "MODEL.US3L.CALIBRATION.NUM_BATCHES", "1"],
         "plain": [os.path.join(ROOT, "projects", "detection", "configs", "faster_rcnn_US-R50_FPN_tiny.yaml"), *R18,
                   "MODEL.US3L.WIDTH_MULT", "0.5"]}


def _train_net(case, out, tiny_coco, tmp_path, kill_after=0, resume=False):
    import subprocess
    import sys

    script = tmp_path / "train_kill.py"
    script.write_text(KILL_SCRIPT)
    config, *opts = CASES[case]
    env = dict(os.environ, KILL_AFTER=str(kill_after), OMP_NUM_THREADS="1", US3L_DATASETS=tiny_coco["datasets_dir"],
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, str(script), "--config-file", config, *(["--resume"] if resume else []),
                           *opts, "OUTPUT_DIR", str(out)], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=600)


@pytest.mark.parametrize("case", sorted(CASES))
def test_sigkill_then_resume_ends_where_the_uninterrupted_run_ends(case, tiny_coco, tmp_path):
    """The slimmable Mask R-CNN (sandwich steps) and a plain Faster R-CNN at width 0.5: ``kill -9`` one iteration
    after model_0000002.pth, then ``train_net.py --resume`` in a new process."""
    straight = _train_net(case, tmp_path / "straight", tiny_coco, tmp_path)
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = _train_net(case, tmp_path / "killed", tiny_coco, tmp_path, kill_after=PERIOD + 1)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "killed").glob("*.pth")) == ["model_0000002.pth"]
    ckpt = read_framework_checkpoint(str(tmp_path / "killed" / "model_0000002.pth"))
    assert ckpt["trainer"]["_trainer"]["optimizer"]["state"]  # the momentum buffers travel
    assert ckpt["trainer"]["data_seed"] == 7 and ckpt["trainer"]["iteration"] == PERIOD - 1
    resumed = _train_net(case, tmp_path / "killed", tiny_coco, tmp_path, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    want = read_framework_checkpoint(str(tmp_path / "straight" / "model_final.pth"))["model"]
    got = read_framework_checkpoint(str(tmp_path / "killed" / "model_final.pth"))["model"]
    assert got.keys() == want.keys()
    differ = [k for k in want if not torch.equal(torch.as_tensor(got[k]), torch.as_tensor(want[k]))]
    assert not differ, f"{len(differ)} of {len(want)} tensors differ, e.g. {differ[:5]}"


def test_control_without_optimizer_state_the_resume_ends_elsewhere(uninterrupted, tiny_coco, tmp_path, caplog):
    """The comparison above can fail: drop the momentum from the checkpoint and the same resume diverges (with a
    warning that says so)."""
    out = tmp_path / "no_momentum"
    cfg = _interrupted(tiny_coco, out)
    path = out / "model_0000002.pth"
    ckpt = read_framework_checkpoint(str(path))
    del ckpt["trainer"]["_trainer"]
    torch.save(ckpt, path)
    with caplog.at_level("WARNING"):
        resumed = _train(cfg, resume=True)
    assert "momentum restarts from zero" in caplog.text
    assert any(not torch.equal(resumed[k], uninterrupted[k]) for k in resumed if k.endswith("weight"))


def test_batches_are_a_function_of_seed_and_batch_number():
    from us3l.d2.resumable import ResumableBatchSampler

    groups = [0, 1] * 10 + [0] * 5
    full = ResumableBatchSampler(groups, 2, seed=3)
    it = iter(full)
    first = [next(it) for _ in range(30)]
    later = ResumableBatchSampler(groups, 2, seed=3, start=17)
    it2 = iter(later)
    assert [next(it2) for _ in range(13)] == first[17:]
    assert all(len({groups[i] for i, _, _ in b}) == 1 for b in first)  # one aspect-ratio group per batch
    assert [b[0][1] for b in first] == list(range(30))  # each item knows its batch number
    # two ranks split one stream: disjoint halves of each epoch's permutation
    r0, r1 = (iter(ResumableBatchSampler([0] * 8, 2, seed=3, rank=r, world_size=2)) for r in (0, 1))
    epoch = [i for b in (next(r0), next(r0), next(r1), next(r1)) for i, _, _ in b]
    assert sorted(epoch) == list(range(8))
    other = iter(ResumableBatchSampler(groups, 2, seed=4))
    assert [next(other) for _ in range(30)] != first


def _truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_resume_falls_back_to_the_newest_intact_checkpoint_and_ends_where_the_uninterrupted_run_ends(
        straight, tiny_coco, tmp_path, caplog):
    """Saves cut short (a full disk, a kill before saves were atomic): model_final.pth, which last_checkpoint names,
    and model_0000005.pth are half files. --resume says so, continues from model_0000002.pth and still ends with
    the uninterrupted run's weights, bit for bit."""
    import shutil

    src, uninterrupted = straight
    out = tmp_path / "damaged"
    shutil.copytree(src, out)
    assert (out / "last_checkpoint").read_text().strip() == "model_final.pth"
    for name in ("model_final.pth", "model_0000005.pth"):
        _truncate(out / name)
    from us3l.d2.checkpoint import check_resumable

    check_resumable(str(out))  # train_net.py's check before default_setup: an intact checkpoint exists
    _other_rng_states()
    with caplog.at_level("WARNING"):
        resumed = _train(_cfg(tiny_coco, out), resume=True)
    assert "model_final.pth (named in last_checkpoint) is truncated or corrupt" in caplog.text
    assert "resuming from model_0000002.pth, the newest intact checkpoint beside it" in caplog.text
    differ = [k for k in resumed if not torch.equal(resumed[k], uninterrupted[k])]
    assert not differ, f"{len(differ)} of {len(resumed)} tensors differ, e.g. {differ[:5]}"


def test_saves_are_atomic(tmp_path, monkeypatch):
    """A save interrupted while writing leaves the previous checkpoint and last_checkpoint as they were."""
    from us3l.d2.checkpoint import US3LCheckpointer

    model = torch.nn.Linear(2, 2)
    ck = US3LCheckpointer(model, str(tmp_path))
    ck.save("model_0000000")
    before = (tmp_path / "model_0000000.pth").read_bytes()

    class Boom(Exception):
        pass

    def explode(*a, **k):
        raise Boom

    monkeypatch.setattr(torch, "save", explode)  # the write fails half way (a full disk)
    with pytest.raises(Boom):
        ck.save("model_0000001")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_0000000.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000000.pth"
    assert (tmp_path / "model_0000000.pth").read_bytes() == before


def test_a_truncated_last_checkpoint_without_an_intact_one_is_refused_before_anything_is_written(tmp_path):
    """Nothing to fall back to: --resume stops with exit 2 and leaves the folder as it was (no config.yaml, no
    log)."""
    import subprocess
    import sys

    out = tmp_path / "run"
    out.mkdir()
    torch.save({"model": {"w": torch.zeros(4096)}, "iteration": 19}, out / "model_0000019.pth")
    _truncate(out / "model_0000019.pth")
    (out / "last_checkpoint").write_text("model_0000019.pth")
    before = sorted(p.name for p in out.iterdir())
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = subprocess.run([sys.executable, os.path.join(ROOT, "projects", "segmentation", "train_net.py"), "--resume",
                          "--config-file", D2_CONFIG, "OUTPUT_DIR", str(out), "MODEL.DEVICE", "cpu"],
                         capture_output=True, text=True, env=env, cwd=ROOT)
    assert run.returncode == 2, run.stderr[-3000:]
    err = run.stderr.strip().splitlines()[-1]
    assert err.startswith("error: --resume:") and "model_0000019.pth" in err and "corrupt" in err
    assert "no intact checkpoint is beside it" in err and "nothing was written" in err
    assert sorted(p.name for p in out.iterdir()) == before
