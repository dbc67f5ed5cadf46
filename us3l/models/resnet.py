"""ResNet-18/50 in torchvision's layout and parameter names, slimmable or at one fixed width.

Stride sits on the 3x3 conv (torchvision / ``STRIDE_IN_1X1=False``). Every conv slices input and output,
the 1x1 shortcut included; only the RGB input of the stem and the classifier's output stay full.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..ops import DEFAULT_WIDTH_RANGE, active_channels
from .layer_factory import LayerFactory

ARCH_SETTINGS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
                 50: ("bottleneck", (3, 4, 6, 3)), 101: ("bottleneck", (3, 4, 23, 3))}
EXPANSION = {"basic": 1, "bottleneck": 4}


class BasicBlock(nn.Module):
    def __init__(self, f: LayerFactory, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = f.conv(inplanes, planes, 3, stride, 1)
        self.bn1 = f.norm(planes)
        self.conv2 = f.conv(planes, planes, 3, 1, 1)
        self.bn2 = f.norm(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(f, inplanes, planes, stride)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity  # in place, as torchvision: a new tensor per block cost US@1.0 ~4 % vs torchvision
        return self.relu(out)


class Bottleneck(nn.Module):
    def __init__(self, f: LayerFactory, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        out = planes * EXPANSION["bottleneck"]
        self.conv1 = f.conv(inplanes, planes, 1)
        self.bn1 = f.norm(planes)
        self.conv2 = f.conv(planes, planes, 3, stride, 1)
        self.bn2 = f.norm(planes)
        self.conv3 = f.conv(planes, out, 1)
        self.bn3 = f.norm(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(f, inplanes, out, stride)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity  # in place, as torchvision (see BasicBlock)
        return self.relu(out)


def stage_channels(depth: int, width: float = 1.0) -> tuple[int, ...]:
    """Output channels of layer1..layer4 at ``width`` (what an FPN's laterals take in)."""
    exp = EXPANSION[ARCH_SETTINGS[depth][0]]
    return tuple(active_channels(64 * 2 ** i * exp, width) for i in range(4))


def _shortcut(f: LayerFactory, inplanes: int, out: int, stride: int):
    if stride == 1 and inplanes == out:
        return None
    return nn.Sequential(f.conv(inplanes, out, 1, stride), f.norm(out))


class ResNet(nn.Module):
    """torchvision-compatible ResNet. ``num_classes=0`` drops the classifier (a backbone, ``fc = Identity``)."""

    def __init__(self, depth: int = 50, num_classes: int = 1000, cifar_stem: bool = False,
                 factory: LayerFactory | None = None):
        super().__init__()
        if depth not in ARCH_SETTINGS:
            raise ValueError(f"unsupported ResNet depth {depth}; choose from {sorted(ARCH_SETTINGS)}")
        f = factory or LayerFactory()
        kind, blocks = ARCH_SETTINGS[depth]
        block_cls = BasicBlock if kind == "basic" else Bottleneck
        self.depth, self.cifar_stem = depth, cifar_stem
        self.feature_dim = 512 * EXPANSION[kind]  # full-width output channels of layer4
        if cifar_stem:
            self.conv1 = f.conv(3, 64, 3, 1, 1, slice_in=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = f.conv(3, 64, 7, 2, 3, slice_in=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = f.norm(64)
        self.relu = nn.ReLU(inplace=True)
        inplanes = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks)):
            layers = []
            for b in range(n):
                layers.append(block_cls(f, inplanes, planes, (1 if i == 0 else 2) if b == 0 else 1))
                inplanes = planes * EXPANSION[kind]
            self.add_module(f"layer{i + 1}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = f.linear(self.feature_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of layer1..layer4 (strides 4, 8, 16, 32 with the ImageNet stem)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            outs.append(x)
        return outs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.avgpool(self.forward_stages(x)[-1]), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))


def us_resnet(depth: int, num_classes: int = 1000, cifar_stem: bool = False,
              width_range=DEFAULT_WIDTH_RANGE) -> ResNet:
    return ResNet(depth, num_classes, cifar_stem, LayerFactory(width_range=width_range))


def us_resnet18(num_classes: int = 1000, cifar_stem: bool = False, width_range=DEFAULT_WIDTH_RANGE) -> ResNet:
    """Universally slimmable ResNet-18 (torchvision names); ``cifar_stem`` = 3x3 stem without max-pool."""
    return us_resnet(18, num_classes, cifar_stem, width_range)


def us_resnet50(num_classes: int = 1000, cifar_stem: bool = False, width_range=DEFAULT_WIDTH_RANGE) -> ResNet:
    """Universally slimmable ResNet-50; at width 1.0 it loads torchvision ``resnet50`` weights strictly."""
    return us_resnet(50, num_classes, cifar_stem, width_range)


def static_resnet(depth: int, width: float, num_classes: int = 1000, cifar_stem: bool = False,
                  norm_layer=None) -> ResNet:
    """A plain ResNet whose tensors are physically sized for ``width`` (what a slimmable one runs there)."""
    return ResNet(depth, num_classes, cifar_stem, LayerFactory(width=width, norm_layer=norm_layer))
