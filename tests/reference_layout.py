"""An independent description of the files the US3L reference code writes (megvii-research/US3L-CVPR2023),
written as data from reading its model and worker code, NOT from this project's modules.

Reference facts used (read from models/OFA/us_resnet.py, us_cifar_resnet.py, us_mobilenet_v2.py,
slimmable_ops.py, utils/ssl_algorithms/byol.py, workers/calibrate.py, utils/prepare_width_model.py):

* ResNet: ``conv1`` (7x7, or 3x3 for the CIFAR variant), ``bn1``, ``layer{1-4}.{b}.conv{k}/bn{k}``,
  shortcut ``downsample.0`` (1x1 conv) / ``downsample.1`` (BN) in a stage's first block when the stride or
  channel count changes, ``fc`` (Linear with bias). Convs have no bias.
* MobileNetV2: ``features.0.{0,1}`` stem conv/BN (32 ch), blocks ``features.{i}.body.{j}`` as ONE flat
  sequence (expand conv 0, BN 1, ReLU 2, depthwise 3, BN 4, ReLU 5, project 6, BN 7; without expansion:
  depthwise 0, BN 1, ReLU 2, project 3, BN 4), ``features.18.{0,1}`` the 1x1 conv to 1280 and a PLAIN
  BatchNorm2d (always with running statistics), ``fc`` Linear(1280, n).
* Slimmable BN (``USBatchNorm2d``) has running statistics only with ``track_running_stats=True``
  (BYOL pre-training: False; calibration worker: True). Channels used at width w: ``make_divisible(C * w)``
  (divisor 8), for MobileNetV2's expanded layers ``make_divisible(C / t * w) * t``.
* BYOL pre-training: ``encoder_q`` = backbone whose ``fc`` becomes a projector Sequential (0 Linear, 1 BN1d,
  3 Linear no bias, 4 BN1d, 6 Linear), ``encoder_k`` its EMA copy, ``predictor`` (0 Linear no bias, 1 BN1d,
  3 Linear), ``predictor_new``; DDP adds ``module.``. The file: ``{"epoch", "arch", "state_dict", "optimizer"}``.
* Calibration worker: ``{"arch", "state_dict"}`` with ``[module.]encoder_q.<backbone>`` (running statistics
  full-sized, updated only in their first c(w) channels; the rest keep the initial 0 / 1) and the plain
  classifier ``encoder_q.fc.{weight,bias}``; the width is only in the file name.
* Detection export: the width-w torchvision-named state dict, every tensor sliced ``[:c_out, :c_in]``,
  with its own ``fc`` and counters.
"""
from __future__ import annotations

import torch

RESNET_BLOCKS = {18: ("basic", (2, 2, 2, 2)), 50: ("bottleneck", (3, 4, 6, 3))}
MBV2_SETTING = ((1, 16, 1), (6, 24, 2), (6, 32, 3), (6, 64, 4), (6, 96, 3), (6, 160, 3), (6, 320, 1))
HIDDEN, DIM = 64, 32  # small SSL head sizes (the reference uses 2048/4096; the layout is the same)


def make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def resnet_layers(depth: int, cifar: bool = False) -> list[tuple[str, str, int, int, int]]:
    """``(name, kind, out, in, kernel)`` of every conv ("conv") and BN ("bn": out = channels) in order."""
    kind, blocks = RESNET_BLOCKS[depth]
    exp = 4 if kind == "bottleneck" else 1
    layers = [("conv1", "conv", 64, 3, 3 if cifar else 7), ("bn1", "bn", 64, 0, 0)]
    inplanes = 64
    for s, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks), start=1):
        for b in range(n):
            p = f"layer{s}.{b}."
            stride = 2 if (b == 0 and s > 1) else 1
            if kind == "basic":
                convs = [(planes, inplanes, 3), (planes, planes, 3)]
            else:
                convs = [(planes, inplanes, 1), (planes, planes, 3), (planes * 4, planes, 1)]
            for k, (o, i, ks) in enumerate(convs, start=1):
                layers += [(f"{p}conv{k}", "conv", o, i, ks), (f"{p}bn{k}", "bn", o, 0, 0)]
            if b == 0 and (stride != 1 or inplanes != planes * exp):
                layers += [(f"{p}downsample.0", "conv", planes * exp, inplanes, 1),
                           (f"{p}downsample.1", "bn", planes * exp, 0, 0)]
            inplanes = planes * exp
    return layers


def mobilenet_layers() -> list[tuple[str, str, int, int, int, int]]:
    """``(name, kind, out, in_per_group, kernel, ratio)`` of the reference US-MobileNetV2 (ratio: expansion
    the slimmable BN/conv rounds by)."""
    layers = [("features.0.0", "conv", 32, 3, 3, 1), ("features.0.1", "bn", 32, 0, 0, 1)]
    inp, i = 32, 1
    for t, c, n in MBV2_SETTING:
        for _ in range(n):
            hid, p, j = inp * t, f"features.{i}.body.", 0
            if t != 1:
                layers += [(f"{p}0", "conv", hid, inp, 1, t), (f"{p}1", "bn", hid, 0, 0, t)]
                j = 3
            layers += [(f"{p}{j}", "conv", hid, 1, 3, t), (f"{p}{j + 1}", "bn", hid, 0, 0, t),
                       (f"{p}{j + 3}", "conv", c, hid, 1, 1), (f"{p}{j + 4}", "bn", c, 0, 0, 1)]
            inp, i = c, i + 1
    layers += [("features.18.0", "conv", 1280, inp, 1, 1), ("features.18.1", "plain_bn", 1280, 0, 0, 1)]
    return layers


def arch_layers(arch: str) -> list[tuple]:
    """Layers of ``us_resnet18`` / ``us_resnet50`` / ``us_cifar_resnet18`` / ``us_mobilenetv2``."""
    if arch == "us_mobilenetv2":
        return mobilenet_layers()
    cifar = arch.startswith("us_cifar_")
    return [(*layer, 1) for layer in resnet_layers(int(arch.rsplit("resnet", 1)[1]), cifar)]


def feature_dim(arch: str) -> int:
    return 1280 if arch == "us_mobilenetv2" else 2048 if arch.endswith("50") else 512


def channels_at(arch: str, name: str, full: int, ratio: int, width: float) -> int:
    """Channels the reference uses at ``width`` (stem input, the 1280-d conv/BN and fc stay full)."""
    if width >= 1.0 or name.startswith("features.18"):
        return full
    return make_divisible(full / ratio * width) * ratio


def backbone_state(arch: str, gen: torch.Generator, stats: bool) -> dict[str, torch.Tensor]:
    """Random backbone tensors in the reference names (``stats``: BN running statistics tracked)."""
    out = {}
    for name, kind, o, i, ks, *_ in arch_layers(arch):
        if kind == "conv":
            out[f"{name}.weight"] = torch.randn(o, i, ks, ks, generator=gen) * 0.1
            continue
        out[f"{name}.weight"] = torch.rand(o, generator=gen) + 0.5
        out[f"{name}.bias"] = torch.rand(o, generator=gen) * 0.2 - 0.1
        if stats or kind == "plain_bn":
            out[f"{name}.running_mean"] = torch.rand(o, generator=gen) * 0.2 - 0.1
            out[f"{name}.running_var"] = torch.rand(o, generator=gen) + 0.5
            out[f"{name}.num_batches_tracked"] = torch.tensor(7)
    return out


def _bn1d(prefix: str, n: int, gen) -> dict:
    return {f"{prefix}.weight": torch.rand(n, generator=gen) + 0.5, f"{prefix}.bias": torch.zeros(n),
            f"{prefix}.running_mean": torch.zeros(n), f"{prefix}.running_var": torch.ones(n),
            f"{prefix}.num_batches_tracked": torch.tensor(3)}


def pretrain_file(arch: str, seed: int = 0, ddp: bool = True, bn_track_stats: bool = False) -> dict:
    """A BYOL pre-training checkpoint (``bn_track_stats``: as SimSiam / SEED runs, mixed-width statistics)."""
    gen = torch.Generator().manual_seed(seed)
    enc = backbone_state(arch, gen, bn_track_stats)
    feat = feature_dim(arch)
    proj = {"fc.0.weight": torch.randn(HIDDEN, feat, generator=gen) * 0.01, "fc.0.bias": torch.zeros(HIDDEN),
            **_bn1d("fc.1", HIDDEN, gen), "fc.3.weight": torch.randn(HIDDEN, HIDDEN, generator=gen) * 0.1,
            **_bn1d("fc.4", HIDDEN, gen), "fc.6.weight": torch.randn(DIM, HIDDEN, generator=gen) * 0.1,
            "fc.6.bias": torch.zeros(DIM)}
    pred = {"0.weight": torch.randn(HIDDEN, DIM, generator=gen) * 0.1, **_bn1d("1", HIDDEN, gen),
            "3.weight": torch.randn(DIM, HIDDEN, generator=gen) * 0.1, "3.bias": torch.zeros(DIM)}
    state = {}
    for part in ("encoder_q", "encoder_k"):
        state.update({f"{part}.{k}": v.clone() for k, v in {**enc, **proj}.items()})
    for part in ("predictor", "predictor_new"):
        state.update({f"{part}.{k}": v.clone() for k, v in pred.items()})
    prefix = "module." if ddp else ""
    optimizer = {"state": {}, "param_groups": [{"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4,
                                                "params": list(range(8))}]}
    return {"epoch": 200, "arch": arch, "state_dict": {prefix + k: v for k, v in state.items()},
            "optimizer": optimizer}


def calibrated_file(arch: str, width: float, seed: int = 0, ddp: bool = False, num_classes: int = HIDDEN
                    ) -> dict:
    """The calibration worker's file at ``width``: the pre-trained weights of ``seed`` with statistics whose
    first c(w) channels were estimated (the rest keep 0 / 1)."""
    weights = backbone_state(arch, torch.Generator().manual_seed(seed), stats=False)
    gen = torch.Generator().manual_seed(int(width * 1000) + 17)
    state = dict(weights)
    for name, kind, o, _, _, ratio in arch_layers(arch):
        if kind == "conv":
            continue
        c = channels_at(arch, name, o, ratio, width)
        mean, var = torch.zeros(o), torch.ones(o)
        mean[:c] = torch.rand(c, generator=gen) * 0.2 - 0.1
        var[:c] = torch.rand(c, generator=gen) + 0.5
        state.update({f"{name}.running_mean": mean, f"{name}.running_var": var,
                      f"{name}.num_batches_tracked": torch.tensor(0 if kind == "bn" else 501)})
    state["fc.weight"] = torch.randn(num_classes, feature_dim(arch), generator=gen) * 0.01
    state["fc.bias"] = torch.zeros(num_classes)
    prefix = "module.encoder_q." if ddp else "encoder_q."
    return {"arch": arch, "state_dict": {prefix + k: v for k, v in state.items()}}


def detection_file(arch: str, width: float, seed: int = 0) -> dict[str, torch.Tensor]:
    """``checkpoint_width_{w}_for_detection.pth.tar`` of a ResNet: the calibrated file sliced to width w."""
    assert arch in ("us_resnet18", "us_resnet50")
    src = {k[len("encoder_q."):]: v for k, v in calibrated_file(arch, width, seed)["state_dict"].items()}
    out = {}
    for name, kind, o, i, _, ratio in arch_layers(arch):
        c = channels_at(arch, name, o, ratio, width)
        if kind == "conv":
            cin = 3 if name == "conv1" else channels_at(arch, name, i, 1, width)
            out[f"{name}.weight"] = src[f"{name}.weight"][:c, :cin].clone()
        else:
            for leaf in ("weight", "bias", "running_mean", "running_var"):
                out[f"{name}.{leaf}"] = src[f"{name}.{leaf}"][:c].clone()
            out[f"{name}.num_batches_tracked"] = torch.tensor(0)
    out["fc.weight"] = torch.randn(1000, channels_at(arch, "fc", feature_dim(arch), 1, width)) * 0.01
    out["fc.bias"] = torch.zeros(1000)
    return out


def us3l_names(arch: str) -> dict[str, str]:
    """Reference MobileNetV2 layer name -> torchvision name (ResNets need none)."""
    if arch != "us_mobilenetv2":
        return {}
    out = {}
    for name, *_ in mobilenet_layers():
        parts = name.split(".")
        if parts[2] != "body":
            continue
        expands = any(n == f"features.{parts[1]}.body.6" for n, *_ in mobilenet_layers())
        sub = {True: {"0": "0.0", "1": "0.1", "3": "1.0", "4": "1.1", "6": "2", "7": "3"},
               False: {"0": "0.0", "1": "0.1", "3": "1", "4": "2"}}[expands][parts[3]]
        out[name] = f"features.{parts[1]}.conv.{sub}"
    return out
