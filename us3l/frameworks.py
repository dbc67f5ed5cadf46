"""The detection frameworks the project plugs into, as data: one table the tools, the pipeline and the detector
backends read, so a fact about Detectron2 or MMDetection (a script, a default config, an override key, the name
of a finished run's checkpoint) is written once.

It imports nothing of the project or the frameworks (:func:`us3l.detection.backends.load_backend` imports a
framework, on demand), so every layer may read it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True)
class Framework:
    name: str                    # the command-line name: d2 | mmdet
    config_suffix: str           # .yaml (Detectron2 yacs) | .py (mmengine)
    backend: str                 # module implementing us3l.detection.backends' functions
    train_script: str            # the fine-tuning entry point (relative to the repository)
    test_script: str             # the evaluation entry point
    convert_tool: str            # pre-training checkpoint -> this framework's backbone file
    converted_file: str          # the file name the pipeline gives that backbone
    configs: Mapping[str, str]   # recipe (per-width | slimmable) -> the embedded set's tiny config
    final_checkpoint: str        # what a finished run folder names its weights by
    pair_overrides: bool         # overrides as ``KEY VALUE`` pairs (yacs) rather than ``key=value`` (DictAction)
    lr_key: str                  # the base learning rate
    freeze_key: str              # how many backbone stages are frozen
    freeze_all: int              # ... every one (neck and heads learn)
    freeze_none: int             # ... none

    @property
    def frozen_backbone(self) -> list:
        return self.overrides({self.freeze_key: self.freeze_all})

    @property
    def trained_backbone(self) -> list:
        return self.overrides({self.freeze_key: self.freeze_none})

    def overrides(self, values: Mapping[str, object]) -> list:
        """``values`` as this framework's command-line overrides (``KEY VALUE ...`` or ``key=value ...``)."""
        if self.pair_overrides:
            return [x for k, v in values.items() for x in (k, v)]
        return [f"{k}={v}" for k, v in values.items()]

    def run_weights(self, run_dir: str) -> str:
        """The final weights of a finished run folder: Detectron2's ``model_final.pth``, or the checkpoint named in
        mmengine's ``last_checkpoint`` (an absolute path; once the folder has moved, its file name in the folder)."""
        path = os.path.join(run_dir, self.final_checkpoint)
        if self.final_checkpoint != "last_checkpoint":
            return path
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{run_dir} holds no mmengine last_checkpoint")
        with open(path) as f:
            named = f.read().strip()
        if os.path.isabs(named) and os.path.isfile(named):
            return named
        return os.path.join(run_dir, os.path.basename(named))


DETECTRON2 = Framework(
    name="d2", config_suffix=".yaml", backend="us3l.d2.detector_tools",
    train_script="projects/segmentation/train_net.py", test_script="projects/segmentation/train_net.py",
    convert_tool="tools/convert_pretrain_to_d2.py", converted_file="backbone_d2.pkl",
    configs={"per-width": "projects/segmentation/configs/mask_rcnn_US-R50_FPN_tiny.yaml",
             "slimmable": "projects/segmentation/configs/mask_rcnn_US-R50_FPN_slimmable_tiny.yaml"},
    final_checkpoint="model_final.pth", pair_overrides=True, lr_key="SOLVER.BASE_LR",
    freeze_key="MODEL.BACKBONE.FREEZE_AT", freeze_all=5, freeze_none=0)

MMDETECTION = Framework(
    name="mmdet", config_suffix=".py", backend="us3l.mmdet.detector_tools",
    train_script="projects/segmentation/mmdet_train.py", test_script="projects/segmentation/mmdet_test.py",
    convert_tool="tools/convert_pretrain_to_mmdet.py", converted_file="backbone_mmdet.pth",
    configs={"per-width": "projects/segmentation/mmdet_configs/mask-rcnn_us-r50_fpn_1x_coco_tiny.py",
             "slimmable": "projects/segmentation/mmdet_configs/mask-rcnn_us-r50_fpn_slimmable_tiny.py"},
    final_checkpoint="last_checkpoint", pair_overrides=False, lr_key="optim_wrapper.optimizer.lr",
    freeze_key="model.backbone.frozen_stages", freeze_all=4, freeze_none=-1)

FRAMEWORKS = {fw.name: fw for fw in (DETECTRON2, MMDETECTION)}


def get_framework(name: str) -> Framework:
    """The table entry of ``name``; an unknown name is a ``ValueError`` listing the known ones."""
    try:
        return FRAMEWORKS[name]
    except KeyError:
        raise ValueError(f"unknown framework {name!r}; choose from {sorted(FRAMEWORKS)}") from None
