"""Helpers shared by the MMDetection / conversion tests: a real US3L ResNet-50 checkpoint in OUR format
(``us3l.backbone/1``, written by this project; the reference code's files come from reference_layout.py)."""
from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile

import torch
import torch.nn as nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CALIBRATED = (0.25, 0.5)


def make_us_r50(seed: int = 0, widths=CALIBRATED):
    """A slimmable ResNet-50 with non-trivial BN affine and statistics calibrated at 1.0 and ``widths``."""
    from us3l import calibrate_bn
    from us3l.models import us_resnet50

    torch.manual_seed(seed)
    model = us_resnet50(num_classes=0)
    with torch.no_grad():  # a wrong slice or another width's statistics must show in the features
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    # 64 px, batch 4: layer4 statistics from 16 values per channel (from 1x1 maps they would be so poor
    # that a detector's features explode in eval mode)
    data = [torch.randn(4, 3, 64, 64)]
    for w in (1.0, *widths):
        calibrate_bn(model, data, w)
    return model.eval()


@functools.lru_cache(maxsize=None)
def us_r50_checkpoint(seed: int = 0) -> tuple:
    """(path of a ``us3l.backbone/1`` file, the model) built once per test session (R50 is slow on 2 cores)."""
    from us3l.checkpoint.model_io import save_model_backbone

    model = make_us_r50(seed)
    folder = tempfile.mkdtemp(prefix="us3l-r50-")
    atexit.register(shutil.rmtree, folder, True)  # 91 MB per test process
    path = os.path.join(folder, f"us_r50_seed{seed}.pth")
    save_model_backbone(model, path)
    return path, model
