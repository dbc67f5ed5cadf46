"""MMDetection fine-tuning resumes exactly: a run stopped after epoch 1 and continued with --resume ends with the
weights of the run that was never stopped, bit for bit, for the slimmable Mask R-CNN (sandwich steps) and a plain
Faster R-CNN. mmengine saves model, optimizer, schedulers and the epoch; its data order is a function of seed and
epoch, the sandwich widths of seed and iteration; what it does not save are the RNG states behind random flips
and RoI / anchor sampling (us3l.mmdet.RNGStateHook). Control: the same resume without them ends elsewhere."""
import os

import mmcv.ops  # noqa: F401
import mmdet  # noqa: F401
import pytest
import torch
from ckpt_helpers import ROOT

from us3l.checkpoint.safe_load import load_torch
from us3l.mmdet import RNGStateHook
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


@pytest.mark.parametrize("case", sorted(CASES))
def test_resume_after_epoch_one_ends_where_the_uninterrupted_run_ends(case, tmp_path, monkeypatch):
    straight = _train(case, tmp_path / "straight", 2)
    _train(case, tmp_path / "resumed", 1)  # the process ends after epoch 1 (as a kill after its checkpoint would)
    ckpt = load_torch(str(tmp_path / "resumed" / "epoch_1.pth"))
    assert set(ckpt["meta"]["rng_states"]) >= {"python", "numpy", "torch"}
    torch.manual_seed(12345)  # a new process starts from other RNG states
    resumed = _train(case, tmp_path / "resumed", 2, resume=True)
    assert resumed.keys() == straight.keys()
    differ = [k for k in straight if not torch.equal(resumed[k], straight[k])]
    assert not differ, f"{len(differ)} of {len(straight)} tensors differ, e.g. {differ[:5]}"

    # control: the same resume without restoring the RNG states ends elsewhere
    (tmp_path / "resumed" / "epoch_2.pth").unlink()
    (tmp_path / "resumed" / "last_checkpoint").write_text(str(tmp_path / "resumed" / "epoch_1.pth"))
    monkeypatch.setattr(RNGStateHook, "after_load_checkpoint", lambda self, runner, checkpoint: None)
    control = _train(case, tmp_path / "resumed", 2, resume=True)
    assert any(not torch.equal(control[k], straight[k]) for k in straight if k.endswith("weight"))
