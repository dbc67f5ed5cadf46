"""The three kinds of files the US3L reference code writes, read into our full-width backbone layout.

* pre-training (``checkpoint.pth.tar``): ``{"epoch", "arch", "state_dict", "optimizer"}`` with the online
  network under ``module.encoder_q.`` (its ``fc`` is the projector), the EMA encoder under
  ``module.encoder_k.``, heads under ``module.predictor*`` / ``module.proj_conv``. BN layers train with
  batch statistics and usually keep no running statistics; where they do (SimSiam, SEED runs), those mix
  every sampled width and are valid for none. The backbone is therefore calibrated at NO width.
* per-width calibration (``checkpoint_width_{w}.pth.tar``): ``{"arch", "state_dict"}`` with
  ``encoder_q.<names>`` (``module.`` when run distributed), running statistics full-sized but valid only
  for the first c(w) channels of each layer, and ``encoder_q.fc`` the un-replaced classifier. The width is
  in the file name only.
* fixed-width detection export (``checkpoint_width_{w}_for_detection.pth.tar``): a bare torchvision state
  dict, every tensor already sliced to width w (read by :func:`us3l.checkpoint.io.extract_backbone`).

MobileNetV2 blocks are ``features.{i}.body.{j}`` (one flat sequence) there, ``features.{i}.conv...`` here.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping

import torch

from .arch import infer_arch
from .report import CheckpointError, LoadReport

# reference ``arch`` names -> (our architecture, CIFAR stem)
REFERENCE_ARCHS = {"us_resnet18": ("resnet18", False), "us_resnet50": ("resnet50", False),
                   "us_cifar_resnet18": ("resnet18", True), "us_cifar_resnet50": ("resnet50", True),
                   "us_mobilenetv2": ("mobilenet_v2", False)}
# parts of a pre-training network that are not the backbone (dropped on purpose, always listed)
_HEADS = (("encoder_q.fc.", "projector (encoder_q.fc)"), ("encoder_k.", "EMA / key encoder"),
          ("predictor_new.", "auxiliary predictor"), ("predictor.", "predictor"),
          ("proj_conv.", "feature adapters"), ("queue", "MoCo queue"))
_STATS = ("running_mean", "running_var", "num_batches_tracked")
_WIDTH_IN_NAME = re.compile(r"width_([0-9]*\.?[0-9]+)")
# reference MobileNetV2 block body index -> our name inside ``features.{i}.conv``
_MBV2_BODY = {True: {0: "0.0", 1: "0.1", 3: "1.0", 4: "1.1", 6: "2", 7: "3"},  # expanding block
              False: {0: "0.0", 1: "0.1", 3: "1", 4: "2"}}  # first block (expand ratio 1)


def is_reference(ckpt) -> bool:
    """Whether ``ckpt`` is a reference pre-training or calibration file (``[module.]encoder_q.*`` keys)."""
    inner = ckpt.get("state_dict") if isinstance(ckpt, Mapping) else None
    return isinstance(inner, Mapping) and any(str(k).startswith(("encoder_q.", "module.encoder_q."))
                                              for k in inner)


def reference_kind(ckpt) -> str:
    """``"pretrain"`` or ``"calibrated"``: the calibration worker keeps the classifier (``encoder_q.fc.weight``),
    pre-training replaces it by the projector (``encoder_q.fc.0.weight``) and adds heads."""
    state = _unwrap(ckpt["state_dict"])
    if "encoder_q.fc.weight" in state and not any(k.startswith(("encoder_k.", "predictor")) for k in state):
        return "calibrated"
    return "pretrain"


def width_from_name(path: str) -> float | None:
    """The width in a reference file name (``checkpoint_width_0.5.pth.tar`` -> 0.5), if any."""
    m = _WIDTH_IN_NAME.search(os.path.basename(path or ""))
    return float(m.group(1).rstrip(".")) if m else None


def extract_reference(ckpt: Mapping, source: str = "", width: float | None = None,
                      report: LoadReport | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """Backbone (our names, full width) and metadata of a reference pre-training or calibration file.

    ``width``: the width a calibration file was calibrated at (default: from its file name ``source``).
    Everything that is not the backbone is listed in ``report.dropped``.
    """
    report = report if report is not None else LoadReport()
    kind = reference_kind(ckpt)
    raw = ckpt["state_dict"]
    pre = "module." if any(str(k).startswith("module.") for k in raw) else ""
    state = _unwrap(raw)
    backbone = {}
    for k, v in state.items():
        if k.startswith("encoder_q.") and not k.startswith("encoder_q.fc."):
            if kind == "pretrain" and k.endswith(_STATS):  # statistics of mixed-width training
                report.dropped.append(f"{pre}{k} (pre-training running statistics: they mix all widths, "
                                      "calibrate instead)")
            else:
                backbone[k[len("encoder_q."):]] = v
            continue
        reason = next((r for p, r in _HEADS if k.startswith(p)), "not part of the backbone")
        if kind == "calibrated" and k.startswith("encoder_q.fc."):
            reason = "classifier of the calibration network (encoder_q.fc)"
        report.dropped.append(f"{pre}{k} ({reason})")
    if any(".body." in k for k in backbone):
        backbone = _mobilenet_names(backbone)
    arch, cifar = _reference_arch(ckpt.get("arch"), backbone)
    meta = {"source": "us3l-reference", "reference_kind": kind, "arch": arch, "cifar_stem": cifar}
    if kind == "pretrain":
        meta["calibrated_widths"] = []
        return backbone, meta
    w = width if width is not None else width_from_name(source)
    if w is None:
        raise CheckpointError(
            f"{source or 'this file'} is a per-width calibration file of the reference code, but its width is "
            "only in the file name (checkpoint_width_{w}.pth.tar): keep that name or pass the width explicitly")
    return _stats_for_width(backbone, arch, cifar, float(w), report), dict(meta, calibrated_widths=[float(w)])


def _unwrap(state: Mapping) -> dict:
    """Drop the ``module.`` prefix DistributedDataParallel adds (on all keys or none)."""
    if any(str(k).startswith("module.") for k in state):
        return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    return dict(state)


def _reference_arch(name, backbone) -> tuple[str, bool]:
    arch, cifar = infer_arch(backbone)
    if name is None:
        return arch, cifar
    if name not in REFERENCE_ARCHS:
        raise CheckpointError(f"reference architecture {name!r} is not supported; supported: "
                              f"{', '.join(REFERENCE_ARCHS)}")
    if REFERENCE_ARCHS[name] != (arch, cifar):
        raise CheckpointError(f"the file says arch {name!r} but its tensors are a {arch} "
                              f"({'CIFAR' if cifar else 'ImageNet'} stem)")
    return arch, cifar


def _mobilenet_names(state: Mapping) -> dict:
    """Reference MobileNetV2 names (``features.{i}.body.{j}``) -> ours (``features.{i}.conv...``)."""
    out = {}
    for k, v in state.items():
        m = re.match(r"^features\.(\d+)\.body\.(\d+)\.(.+)$", k)
        if not m:
            out[k] = v
            continue
        expands = f"features.{m.group(1)}.body.6.weight" in state
        sub = _MBV2_BODY[expands].get(int(m.group(2)))
        if sub is None:
            raise CheckpointError(f"unexpected MobileNetV2 layer {k!r} in the reference checkpoint")
        out[f"features.{m.group(1)}.conv.{sub}.{m.group(3)}"] = v
    return out


def _stats_for_width(state: dict, arch: str, cifar: bool, width: float, report: LoadReport) -> dict:
    """Keep the first c(w) channels of each layer's statistics, under the width's statistics names."""
    from ..models import build_us_model
    from ..ops import USBatchNorm2d
    from ..ops.norm import _stats_names

    model = build_us_model(arch, 0, cifar)
    mean_name, var_name = _stats_names(width)
    out = {k: v for k, v in state.items() if not k.endswith(_STATS)}
    for name, bn in model.named_modules():
        if not isinstance(bn, USBatchNorm2d):
            continue
        c = bn.features_at(width)
        for src, dst in (("running_mean", mean_name), ("running_var", var_name)):
            t = state.get(f"{name}.{src}")
            if t is None:
                raise CheckpointError(f"the calibration file has no {name}.{src}: not a calibrated network")
            if t.shape[0] < c:
                raise CheckpointError(f"{name}.{src} has {t.shape[0]} channels, width {width} needs {c}")
            out[f"{name}.{dst}"] = t[:c].clone()
        report.dropped.append(f"{name}.num_batches_tracked (batch counter of the calibration run)")
    return out
