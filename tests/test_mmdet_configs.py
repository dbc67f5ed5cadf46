"""MMDetection configs: composed from shared ``_base_`` files, and unchanged by that restructuring.

The pre-restructuring configs are read from the git history (commit ``BEFORE``), so the comparison is against
the files users ran, not against anything produced by the code under test.
"""
import glob
import os
import subprocess

import pytest
from ckpt_helpers import ROOT
from mmengine.config import Config

BEFORE = "bdb98d9bd98770f03e4c2b4c620bd9395040114a"  # last commit with self-contained leaf configs
# last commit before the slimmable leaves and bases were restructured (the mask-rcnn bases inheriting the
# faster-rcnn ones, schedules/sandwich_*.py); the first to hold the us3l_shapes dataset bases they use
SLIM_BEFORE = "759d0f6b70b5a3f9ad39e7248375b436ebd71618"
PROJECTS = os.path.join(ROOT, "projects")
PLAIN = sorted(f for f in glob.glob(os.path.join(PROJECTS, "*", "mmdet_configs", "*.py")) if "slimmable" not in f)
SLIMMABLE = sorted(glob.glob(os.path.join(PROJECTS, "*", "mmdet_configs", "*slimmable*.py")))


# The one deliberate change since those commits: the tiny configs' proposal and RoI counts, scaled to their 128-px
# images (the counts of the tiny Detectron2 configs), set through two dataset-base variables.
TINY_COUNTS = {"model.train_cfg.rpn.sampler.num": 64, "model.train_cfg.rpn_proposal.nms_pre": 400,
               "model.train_cfg.rpn_proposal.max_per_img": 200, "model.train_cfg.rcnn.sampler.num": 32,
               "model.test_cfg.rpn.nms_pre": 200, "model.test_cfg.rpn.max_per_img": 100}


def _load(path: str, counts: dict | None = None) -> tuple:
    """The merged config (``counts`` applied, the tiny-count variables dropped) as a dict and as mmengine prints
    it (what a run logs)."""
    cfg = Config.fromfile(path, import_custom_modules=False)
    cfg.merge_from_dict(counts or {})
    merged = {k: v for k, v in cfg.to_dict().items() if k not in ("tiny_train_cfg", "tiny_test_cfg")}
    return merged, Config(merged).pretty_text


def _same_config(path: str, old: str) -> bool:
    """``path`` merges to what ``old`` did, plus the new counts where ``path`` is a tiny config."""
    return _load(path) == _load(old, TINY_COUNTS if path.endswith("_tiny.py") else None)


def _git(*args) -> str:
    return subprocess.run(["git", "-C", ROOT, *args], capture_output=True, text=True, check=True).stdout


def _checkout_configs(commit, dst_root, monkeypatch):
    """The MMDetection configs (leaves and shared bases) as of ``commit``, under ``dst_root``."""
    monkeypatch.setenv("US3L_DATASETS", "/datasets-root")
    try:
        names = _git("ls-tree", "-r", "--name-only", commit, "projects").split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout holding the pre-restructuring commit")
    for name in names:
        if "/mmdet_configs/" in name or "/mmdet_base/" in name:
            dst = dst_root / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_text(_git("show", f"{commit}:{name}"))
    return dst_root


@pytest.fixture
def before(tmp_path, monkeypatch):
    return _checkout_configs(BEFORE, tmp_path, monkeypatch)


def test_restructured_configs_merge_to_the_same_config(before):
    old = sorted(glob.glob(str(before / "projects" / "*" / "mmdet_configs" / "*.py")))
    assert [os.path.relpath(p, before) for p in old] == [os.path.relpath(p, ROOT) for p in PLAIN]
    for path in PLAIN:
        assert _same_config(path, str(before / os.path.relpath(path, ROOT))), path


def test_restructured_slimmable_configs_merge_to_the_same_config(tmp_path, monkeypatch):
    old_root = _checkout_configs(SLIM_BEFORE, tmp_path, monkeypatch)
    for path in SLIMMABLE:
        old = str(old_root / os.path.relpath(path, ROOT))
        assert os.path.exists(old), path
        assert _same_config(path, old), path


def test_leaves_inherit_shared_bases_and_hold_only_what_differs():
    for path in PLAIN:
        text = open(path).read()
        assert "_base_" in text
        assert len(text.splitlines()) <= 16, f"{path} repeats what a _base_ file holds"
        if path.endswith("_tiny.py"):  # the embedded dataset, the 12-epoch schedule, the CPU runtime: one layer
            layer = "tiny_detection.py" if os.path.basename(path).startswith("faster") else "tiny_instance.py"
            assert f"'../../mmdet_base/{layer}'" in text
            layer_text = open(os.path.join(PROJECTS, "mmdet_base", layer)).read()
            assert "datasets/us3l_shapes_" in layer_text and "schedules/tiny_12e.py" in layer_text


def test_slimmable_configs_parse(monkeypatch):
    from us3l.data.synthetic import CLASS_NAMES

    monkeypatch.setenv("US3L_DATASETS", "/datasets-root")
    assert len(SLIMMABLE) == 4  # Faster / Mask R-CNN, 1x and tiny
    for path in SLIMMABLE:
        cfg = Config.fromfile(path)
        assert cfg.model.type in ("SlimmableFasterRCNN", "SlimmableMaskRCNN")
        assert cfg.model.backbone.type == "US3LSlimmableResNet" and cfg.model.neck.type == "SlimmableFPN"
        assert cfg.model_wrapper_cfg.type == "SandwichDistributedDataParallel"
        assert cfg.optim_wrapper.clip_grad.max_norm == 35
        if path.endswith("_tiny.py"):
            assert tuple(cfg.train_dataloader.dataset.metainfo.classes) == CLASS_NAMES
            assert cfg.model.roi_head.bbox_head.num_classes == len(CLASS_NAMES)
