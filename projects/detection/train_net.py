#!/usr/bin/env python
"""Faster R-CNN with a US3L backbone at any width: train, --eval-only, --resume, --num-gpus (Detectron2 launch).

    python projects/detection/train_net.py --config-file projects/detection/configs/faster_rcnn_US-R50_FPN_1x.yaml \
        --num-gpus 8 MODEL.WEIGHTS us3l_resnet50.pkl MODEL.US3L.WIDTH_MULT 0.5

The logic lives in us3l.d2.engine (shared by both projects; also the console script ``us3l-train-net``).
"""
import sys

from us3l.d2.engine import cli

if __name__ == "__main__":
    sys.exit(cli())
