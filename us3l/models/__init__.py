"""Universally slimmable backbones and their fixed-width twins, built by name."""
from __future__ import annotations

from .mobilenet_v2 import MobileNetV2, static_mobilenet_v2, us_mobilenet_v2
from .resnet import ResNet, static_resnet, us_resnet, us_resnet18, us_resnet50

ARCHS = ("resnet18", "resnet50", "mobilenet_v2")


def build_us_model(arch: str, num_classes: int = 0, cifar_stem: bool = False, width_range=(0.25, 1.0)):
    """Slimmable model by architecture name (``resnet18``, ``resnet50``, ``mobilenet_v2``)."""
    if arch == "resnet18":
        return us_resnet18(num_classes, cifar_stem, width_range)
    if arch == "resnet50":
        return us_resnet50(num_classes, cifar_stem, width_range)
    if arch == "mobilenet_v2":
        if cifar_stem:
            raise ValueError("mobilenet_v2 has no CIFAR stem variant")
        return us_mobilenet_v2(num_classes, width_range)
    raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHS)}")


def build_static_model(arch: str, width: float, num_classes: int = 0, cifar_stem: bool = False,
                       norm_layer=None):
    """Plain model of ``arch`` physically sized for ``width`` (same layout/names as the slimmable one)."""
    if arch in ("resnet18", "resnet50"):
        return static_resnet(int(arch[6:]), width, num_classes, cifar_stem, norm_layer)
    if arch == "mobilenet_v2":
        return static_mobilenet_v2(width, num_classes, norm_layer)
    raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHS)}")


def arch_of(model) -> str:
    if isinstance(model, ResNet):
        return f"resnet{model.depth}"
    if isinstance(model, MobileNetV2):
        return "mobilenet_v2"
    raise ValueError(f"{type(model).__name__} is not a us3l architecture")


__all__ = ["ResNet", "MobileNetV2", "us_resnet", "us_resnet18", "us_resnet50", "us_mobilenet_v2",
           "static_resnet", "static_mobilenet_v2", "build_us_model", "build_static_model", "arch_of", "ARCHS"]
