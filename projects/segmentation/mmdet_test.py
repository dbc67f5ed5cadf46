#!/usr/bin/env python
"""Evaluate a fine-tuned US3L detector checkpoint at its width (COCO box / mask AP), MMDetection 3.x.

    python projects/segmentation/mmdet_test.py CONFIG CHECKPOINT --width 0.5 [--work-dir DIR] [--cfg-options ...]

The width must be the one the checkpoint was fine-tuned at. Metrics go to WORK_DIR/metrics_w0.50.json.
"""
import sys

from us3l.mmdet.engine import test_cli

if __name__ == "__main__":
    sys.exit(test_cli())
