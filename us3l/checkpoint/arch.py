"""Which backbone a torchvision-named state dict is (read by every checkpoint reader, ours and the reference's)."""
from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from .report import CheckpointError


def infer_arch(state: Mapping[str, torch.Tensor]) -> tuple[str, bool]:
    """(architecture name, CIFAR stem?) of a torchvision-named backbone state dict."""
    if "features.0.0.weight" in state:
        return "mobilenet_v2", False
    if "conv1.weight" not in state:
        raise CheckpointError("not a ResNet/MobileNetV2 backbone state dict (no conv1.weight / features.0.0.weight); "
                              f"first keys: {list(state)[:5]}")
    bottleneck = "layer1.0.conv3.weight" in state
    n3 = len({m.group(1) for k in state for m in [re.match(r"layer3\.(\d+)\.", k)] if m})
    depth = {(False, 2): 18, (False, 6): 34, (True, 6): 50, (True, 23): 101}.get((bottleneck, n3))
    if depth is None:
        raise CheckpointError(f"unrecognised ResNet layout (bottleneck={bottleneck}, {n3} blocks in layer3)")
    return f"resnet{depth}", state["conv1.weight"].shape[-1] == 3
