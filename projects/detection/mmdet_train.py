#!/usr/bin/env python
"""Fine-tune a US3L detector at one width with MMDetection 3.x (mmengine Runner).

    python projects/detection/mmdet_train.py CONFIG [--width 0.5] [--work-dir DIR] \
        [--cfg-options model.backbone.init_cfg.checkpoint=us3l_r50_mmdet.pth ...] [--launcher pytorch]

Multi-GPU: torchrun --nproc_per_node=8 projects/detection/mmdet_train.py CONFIG --launcher pytorch
Metrics are named by width (``w0.50/bbox_mAP``) and written to WORK_DIR/metrics_w0.50.json.
"""
import sys

from us3l.mmdet.engine import train_cli

if __name__ == "__main__":
    sys.exit(train_cli())
