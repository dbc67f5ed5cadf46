"""A checkpoint never runs code: crafted files given to every loading path are refused, nothing runs, nothing
is written. Plain files (numpy / trainer state) still load, and detector checkpoints must fit exactly.

The crafted files follow the textbook pickle exploit, built here with the standard library and torch only
(not with the code under test): an object whose ``__reduce__`` returns ``(os.system, ("touch MARKER",))``.
Every entry point runs as a subprocess, the way a user runs it.
"""
import collections
import glob
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from us3l.checkpoint import CheckpointError
from us3l.checkpoint.safe_load import load_any, load_pickle, load_torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEG = os.path.join(ROOT, "projects", "segmentation")
DET = os.path.join(ROOT, "projects", "detection")
REFUSED = "refusing to unpickle posix.system"


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def crafted(tmp_path):
    """Crafted files in every container the loaders accept, and the marker their payload would create."""
    marker = tmp_path / "MARKER"
    payload = {"model": {"conv1.weight": _RunsCode(marker)}, "__author__": "someone"}
    files = {}
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump(payload, f, protocol=2)
    files["pkl"] = tmp_path / "evil.pkl"
    torch.save(payload, tmp_path / "evil.pth")
    files["pth"] = tmp_path / "evil.pth"
    torch.save({"state_dict": {"backbone.conv1.weight": _RunsCode(marker)}}, tmp_path / "evil_mmdet.pth")
    files["mmdet"] = tmp_path / "evil_mmdet.pth"
    return marker, files


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", **extra)
    env.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    return env


def _refused(cmd, marker, outputs=(), cwd=None, env=None, code=2):
    """Runs ``cmd``; asserts the refusal (exit ``code``, one ``error:`` line), no marker and no outputs."""
    r = subprocess.run([sys.executable, *map(str, cmd)], cwd=cwd or marker.parent, env=env or _env(),
                       capture_output=True, text=True, timeout=600)
    text = r.stdout + r.stderr
    assert r.returncode == code, r.stdout[-2000:] + r.stderr[-3000:]
    assert REFUSED in text, r.stdout[-2000:] + r.stderr[-3000:]
    if code == 2:
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and REFUSED in last, r.stderr[-3000:]
    assert not marker.exists(), "the crafted file ran a command"
    for out in outputs:
        assert not os.path.exists(out), f"{out} was written"
    return r


# ------------------------------------------------------------------------------------------- library level
def test_loaders_refuse_code_and_name_the_callable(crafted):
    marker, files = crafted
    for path in files.values():
        with pytest.raises(CheckpointError, match=REFUSED):
            load_any(str(path))
    with pytest.raises(CheckpointError, match=REFUSED):
        load_pickle(str(files["pkl"]))
    with pytest.raises(CheckpointError, match=REFUSED):
        load_torch(str(files["pth"]))
    assert not marker.exists()


def test_plain_data_still_loads(tmp_path):
    """What real checkpoints hold: numpy arrays / scalars / dtypes (Detectron2 model zoo .pkl, trainer states),
    OrderedDict, under pickle protocols 2 (Python-2-era model zoo files) to 5."""
    obj = {"model": collections.OrderedDict(w=np.arange(6, dtype=np.float32).reshape(2, 3)),
           "iteration": np.int64(7), "lr": np.float64(0.01), "dtype": np.dtype("int64"), "names": ("a", "b"),
           "flags": {1, 2}, "raw": b"\x00\x01"}
    for protocol in (2, 4, 5):
        with open(tmp_path / f"p{protocol}.pkl", "wb") as f:
            pickle.dump(obj, f, protocol=protocol)
        back = load_pickle(str(tmp_path / f"p{protocol}.pkl"))
        assert back["iteration"] == 7 and back["dtype"] == np.dtype("int64") and back["raw"] == b"\x00\x01"
        np.testing.assert_array_equal(back["model"]["w"], obj["model"]["w"])
    torch.save({**obj, "t": torch.ones(2)}, tmp_path / "state.pth")
    back = load_torch(str(tmp_path / "state.pth"))
    assert back["iteration"] == 7 and back["lr"] == 0.01 and torch.equal(back["t"], torch.ones(2))


def test_other_classes_are_refused_by_name(tmp_path):
    with open(tmp_path / "x.pkl", "wb") as f:
        pickle.dump({"when": __import__("datetime").date(2020, 1, 1)}, f)
    with pytest.raises(CheckpointError, match="refusing to unpickle datetime.date"):
        load_pickle(str(tmp_path / "x.pkl"))


def test_unreadable_files_are_clear_errors(tmp_path):
    (tmp_path / "junk.pkl").write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(CheckpointError, match="cannot read .*junk.pkl"):
        load_pickle(str(tmp_path / "junk.pkl"))
    with pytest.raises(CheckpointError, match="not found"):
        load_torch(str(tmp_path / "missing.pth"))


# -------------------------------------------------------------------------------- converters and tools
@pytest.mark.parametrize("tool, src, args", [
    ("convert_d2_to_mmdet", "pkl", ["OUT.pth"]),
    ("convert_d2_to_mmdet", "pth", ["OUT.pth"]),
    ("convert_mmdet_to_d2", "mmdet", ["OUT.pkl"]),
    ("convert_pretrain_to_d2", "pth", ["OUT.pkl"]),
    ("convert_pretrain_to_mmdet", "pth", ["OUT.pth"]),
    ("calibrate_bn", "pth", ["OUT.pth", "--widths", "0.5", "--data-root", "DATA", "--num-batches", "1"]),
    ("eval_ssl", "pth", ["--widths", "0.5", "--output", "OUT.json"]),
    ("export_static", "pth", ["OUT.pth", "--width", "0.5"]),
])
def test_tools_refuse_crafted_checkpoints(crafted, tiny_cls, tool, src, args):
    marker, files = crafted
    out = marker.parent / ("OUT" + os.path.splitext(next(a for a in args if a.startswith("OUT")))[1])
    args = [str(out) if a.startswith("OUT") else tiny_cls["root"] if a == "DATA" else a for a in args]
    _refused([os.path.join(ROOT, "tools", f"{tool}.py"), files[src], *args], marker, [out])


# ------------------------------------------------------------------------------------------- Detectron2
def _d2_cmd(out, *extra):
    config = os.path.join(SEG, "configs", "mask_rcnn_US-R50_FPN_tiny.yaml")
    return [os.path.join(SEG, "train_net.py"), "--config-file", config, *extra,
            "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.US3L.WIDTH_MULT", "0.5",
            "SOLVER.MAX_ITER", "1", "SOLVER.IMS_PER_BATCH", "2", "TEST.PRECISE_BN.ENABLED", "False",
            "OUTPUT_DIR", str(out)]


@pytest.mark.parametrize("src", ["pkl", "pth"])
def test_detectron2_eval_only_and_train_refuse_crafted_weights(crafted, tiny_coco, src):
    marker, files = crafted
    out = marker.parent / "out"
    env = _env(US3L_DATASETS=tiny_coco["datasets_dir"])
    _refused(_d2_cmd(out, "--eval-only", "MODEL.WEIGHTS", files[src]), marker, [out / "inference"], env=env)
    _refused(_d2_cmd(out, "MODEL.WEIGHTS", files[src]), marker, [out / "model_final.pth"], env=env)


def test_detectron2_resume_refuses_a_crafted_last_checkpoint(crafted, tiny_coco):
    marker, files = crafted
    out = marker.parent / "out"
    out.mkdir()
    os.replace(files["pth"], out / "model_0000000.pth")
    (out / "last_checkpoint").write_text("model_0000000.pth")
    env = _env(US3L_DATASETS=tiny_coco["datasets_dir"])
    _refused(_d2_cmd(out, "--resume", "MODEL.WEIGHTS", ""), marker, [out / "model_final.pth"], env=env)


# ------------------------------------------------------------------------------------------ MMDetection
MM_CONFIG = os.path.join(DET, "mmdet_configs", "faster-rcnn_us-r50_fpn_1x_coco_tiny.py")


def test_mmdetection_test_train_and_resume_refuse_crafted_checkpoints(crafted, tiny_coco):
    marker, files = crafted
    work = marker.parent / "work"
    env = _env(US3L_DATASETS=tiny_coco["datasets_dir"])
    _refused([os.path.join(DET, "mmdet_test.py"), MM_CONFIG, files["mmdet"], "--work-dir", work], marker, env=env)
    # a pre-trained backbone file given through init_cfg
    _refused([os.path.join(DET, "mmdet_train.py"), MM_CONFIG, "--work-dir", work, "--cfg-options",
              f"model.backbone.init_cfg.checkpoint={files['pth']}", "train_cfg.max_epochs=1"], marker,
             [work / "epoch_1.pth"], env=env)
    # --resume picks the work dir's latest checkpoint
    os.replace(files["mmdet"], work / "epoch_1.pth")
    (work / "last_checkpoint").write_text(str(work / "epoch_1.pth"))
    _refused([os.path.join(DET, "mmdet_train.py"), MM_CONFIG, "--work-dir", work, "--resume", "--cfg-options",
              "model.backbone.init_cfg=None", "train_cfg.max_epochs=2"], marker, [work / "epoch_2.pth"], env=env)


def test_mmdetection_test_refuses_a_checkpoint_without_the_detector(tiny_coco, tmp_path):
    """``{'state_dict': {'foo.weight': ...}}`` used to evaluate a randomly initialised detector and exit 0."""
    torch.save({"state_dict": {"foo.weight": torch.zeros(3)}}, tmp_path / "foo.pth")
    r = subprocess.run([sys.executable, os.path.join(DET, "mmdet_test.py"), MM_CONFIG, str(tmp_path / "foo.pth"),
                        "--work-dir", str(tmp_path / "work")], cwd=tmp_path,
                       env=_env(US3L_DATASETS=tiny_coco["datasets_dir"]), capture_output=True, text=True, timeout=600)
    assert r.returncode == 2, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: loading detector checkpoint") and "does not match the model" in last
    assert "1 unexpected" in last and "unexpected: foo.weight" in last and "missing: backbone." in last
    assert "bbox_mAP" not in r.stdout


def test_eval_widths_refuses_crafted_weights(crafted, tiny_coco):
    marker, files = crafted
    out = marker.parent / "ev"
    # the per-width entry point refuses the file: eval_widths exits 2 with its error line and leaves no folder
    _refused([os.path.join(ROOT, "tools", "eval_widths.py"), files["pth"], "--widths", "0.5", "--output-dir", out,
              "--datasets", tiny_coco["datasets_dir"]], marker, [out])


def test_mmdetection_resume_reads_its_own_trainer_state(tiny_coco, tmp_path, monkeypatch):
    """mmengine's checkpoints (optimizer, schedulers, message hub with HistoryBuffer / numpy) resume weights-only."""
    from test_mmdet_train import TINY

    from us3l.mmdet.engine import train_main

    monkeypatch.setenv("US3L_DATASETS", tiny_coco["datasets_dir"])
    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)
    opts = [*TINY, "model.backbone.init_cfg=None", "model.neck.norm_cfg=None", "train_cfg.val_interval=10"]
    args = [MM_CONFIG, "--work-dir", str(tmp_path), "--width", "0.25", "--cfg-options", *opts]
    train_main(args)
    runner = train_main([*args, "train_cfg.max_epochs=2", "--resume"])
    assert runner.epoch == 2 and (tmp_path / "epoch_2.pth").exists()
    logs = [open(p).read() for p in glob.glob(str(tmp_path / "*" / "*.log"))]
    assert any("resumed epoch: 1, iter: 2" in log for log in logs)


def test_us3l_runner_on_a_small_mmengine_model(crafted, tmp_path):
    """US3LRunner's loading itself, on a small mmengine model (no detector): its own trainer checkpoints resume
    weights-only (message hub HistoryBuffer, numpy, MultiStepLR's Counter), a crafted file is refused, and a
    checkpoint of another model is an error before any tensor is copied."""
    import torch.nn as nn
    from mmengine.model import BaseModel

    from us3l.mmdet.runner import US3LRunner

    class Small(BaseModel):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(2, 1)

        def forward(self, inputs, labels=None, mode="tensor"):
            out = self.linear(inputs).squeeze(-1)
            return {"loss": ((out - labels) ** 2).mean()} if mode == "loss" else out

    data = [{"inputs": torch.tensor([float(i), 1.0]), "labels": torch.tensor(float(i % 2))} for i in range(4)]

    def runner(epochs, resume=False):
        return US3LRunner(model=Small(), work_dir=str(tmp_path / "work"), resume=resume, default_scope="mmdet",
                          train_dataloader=dict(dataset=data, batch_size=2, collate_fn=dict(type="default_collate"),
                                                sampler=dict(type="DefaultSampler", shuffle=False)),
                          optim_wrapper=dict(optimizer=dict(type="SGD", lr=0.01, momentum=0.9)),
                          param_scheduler=dict(type="MultiStepLR", milestones=[1]),
                          train_cfg=dict(by_epoch=True, max_epochs=epochs),
                          default_hooks=dict(checkpoint=dict(type="CheckpointHook", interval=1)))

    runner(1).train()
    resumed = runner(2, resume=True)
    resumed.train()
    assert resumed.epoch == 2 and resumed.iter == 4 and (tmp_path / "work" / "epoch_2.pth").exists()
    marker, files = crafted
    with pytest.raises(CheckpointError, match=REFUSED):
        resumed.load_checkpoint(str(files["mmdet"]))
    assert not marker.exists()
    torch.save({"state_dict": {"foo.weight": torch.zeros(3)}}, tmp_path / "foo.pth")
    before = resumed.model.linear.weight.detach().clone()
    with pytest.raises(CheckpointError, match="does not match the model") as err:
        resumed.load_checkpoint(str(tmp_path / "foo.pth"))
    assert "unexpected: foo.weight" in str(err.value) and "missing: linear.weight" in str(err.value)
    assert torch.equal(resumed.model.linear.weight, before)


def test_mmdetection_user_config_neck_pretrained_is_weights_only_with_the_variable_set(crafted, tiny_coco, tmp_path):
    """A user config whose NECK has its own ``Pretrained`` init_cfg goes through mmengine's CheckpointLoader, not our
    backbone loader; with ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` in the environment a crafted file used to run its
    command. ``import us3l.mmdet`` (the config's custom_imports) makes that loader weights-only for the process."""
    marker, files = crafted
    config = tmp_path / "user_config.py"
    config.write_text(f"_base_ = [{MM_CONFIG!r}]\n"
                      f"model = dict(backbone=dict(init_cfg=None),\n"
                      "             neck=dict(init_cfg=dict(type='Pretrained', "
                      f"checkpoint={str(files['mmdet'])!r})))\n")
    out = tmp_path / "work"
    _refused([os.path.join(DET, "mmdet_train.py"), config, "--work-dir", out, "--cfg-options",
              "train_cfg.max_epochs=1", "train_dataloader.dataset.indices=2"], marker, [out / "epoch_1.pth"],
             env=dict(_env(US3L_DATASETS=tiny_coco["datasets_dir"]), TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1"))


def test_detectron2_stock_checkpointer_reads_safely_once_us3l_d2_is_imported(crafted, tmp_path, monkeypatch):
    """Detectron2's own DetectionCheckpointer (what DefaultTrainer and DefaultPredictor use) unpickles a ``.pkl`` with
    a bare ``pickle.load`` and a ``.pth`` with a bare ``torch.load``; after ``import us3l.d2`` both go through the
    safe readers, even with ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``, and plain files still load."""
    import numpy as np
    from detectron2.checkpoint import DetectionCheckpointer

    import us3l.d2  # noqa: F401

    marker, files = crafted
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    model = torch.nn.Linear(2, 2)
    for kind in ("pkl", "pth"):
        with pytest.raises(CheckpointError, match=REFUSED):
            DetectionCheckpointer(model).load(str(files[kind]))
        assert not marker.exists(), f"the crafted .{kind} ran a command"
    weight = np.full((2, 2), 0.5, dtype=np.float32)
    with open(tmp_path / "plain.pkl", "wb") as f:
        pickle.dump({"model": {"weight": weight, "bias": np.zeros(2, np.float32)}, "__author__": "me"}, f)
    DetectionCheckpointer(model).load(str(tmp_path / "plain.pkl"))
    assert torch.equal(model.weight, torch.from_numpy(weight))
    torch.save({"model": {"weight": torch.ones(2, 2), "bias": torch.ones(2)}}, tmp_path / "plain.pth")
    DetectionCheckpointer(model).load(str(tmp_path / "plain.pth"))
    assert torch.equal(model.weight, torch.ones(2, 2))
