"""MobileNetV2 in torchvision's layout and names, slimmable or at one fixed width.

The expansion ratio is kept at every width: a block's hidden channels are ``t * c(w)`` with ``c(w)`` the
rounded input channels (the reference code's rule, so its checkpoints and per-width statistics fit); the
stem's RGB input, the 1280-d last conv's output and the classifier stay full.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..ops import DEFAULT_WIDTH_RANGE
from .layer_factory import LayerFactory

INVERTED_RESIDUAL_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                             (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def _conv_bn_relu(f: LayerFactory, cin, cout, kernel_size=3, stride=1, *, depthwise=False, slice_in=True,
                  slice_out=True, ratio=(1, 1)) -> nn.Sequential:
    groups = cin if depthwise else 1
    return nn.Sequential(
        f.conv(cin, cout, kernel_size, stride, (kernel_size - 1) // 2, groups, slice_in=slice_in,
               slice_out=slice_out, depthwise=depthwise, ratio=ratio),
        f.norm(cout, sliced=slice_out, ratio=ratio[1]), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, f: LayerFactory, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        t = expand_ratio
        layers = [] if t == 1 else [_conv_bn_relu(f, inp, hidden, 1, ratio=(1, t))]
        layers += [_conv_bn_relu(f, hidden, hidden, 3, stride, depthwise=True, ratio=(t, t)),
                   f.conv(hidden, oup, 1, ratio=(t, 1)), f.norm(oup)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000, factory: LayerFactory | None = None, dropout: float = 0.2):
        super().__init__()
        f = factory or LayerFactory()
        features = [_conv_bn_relu(f, 3, 32, 3, 2, slice_in=False)]
        inp = 32
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            for i in range(n):
                features.append(InvertedResidual(f, inp, c, s if i == 0 else 1, t))
                inp = c
        self.feature_dim = 1280
        features.append(_conv_bn_relu(f, inp, self.feature_dim, 1, slice_out=False))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = (nn.Sequential(nn.Dropout(dropout), f.linear(self.feature_dim, num_classes,
                                                                       slice_in=False))
                           if num_classes > 0 else nn.Identity())
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.avgpool(self.features(x)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))


def us_mobilenet_v2(num_classes: int = 1000, width_range=DEFAULT_WIDTH_RANGE) -> MobileNetV2:
    """Universally slimmable MobileNetV2 (torchvision names)."""
    return MobileNetV2(num_classes, LayerFactory(width_range=width_range))


def static_mobilenet_v2(width: float, num_classes: int = 1000, norm_layer=None) -> MobileNetV2:
    return MobileNetV2(num_classes, LayerFactory(width=width, norm_layer=norm_layer))
