#!/usr/bin/env python
"""Fine-tune a US3L Mask R-CNN at one width with MMDetection 3.x: the command line of
projects/detection/mmdet_train.py (``--width``, ``--work-dir``, ``--cfg-options``, ``--launcher pytorch``, torchrun),
for the configs in projects/segmentation/mmdet_configs/."""
import sys

from us3l.mmdet.engine import train_cli

if __name__ == "__main__":
    sys.exit(train_cli())
