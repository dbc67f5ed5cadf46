"""Turning ONE full-width checkpoint into the tensors of a model at any width.

Two steps, shared by export and by the Detectron2 / MMDetection loaders:
``select_width_stats`` puts the BN statistics calibrated for the width into the standard
``running_mean``/``running_var`` keys; ``slice_to_shapes`` takes the prefix slice of every tensor that a
width-``w`` model holds, failing on anything that is not such a slice.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from ..ops.norm import UncalibratedWidthError
from ..ops.width_state import width_key
from .report import LoadReport

_WIDTH_STATS = re.compile(r"^(.*)running_(mean|var)_w(\d{4})$")
BN_STATS_POLICIES = ("calibrated", "reset")


def bn_layers(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Name prefixes (``layer1.0.bn1.``) of the norm layers of a backbone state dict: 1-d weight with a bias
    (the convolutions of these backbones have no bias, their classifiers are not in a backbone)."""
    return [k[: -len("weight")] for k, v in state.items() if k.endswith("weight") and v.dim() == 1
            and f"{k[: -len('weight')]}bias" in state]


def has_native_stats(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether every norm layer holds the standard ``running_mean``/``running_var``."""
    bases = bn_layers(state)
    return bool(bases) and all(f"{b}running_mean" in state and f"{b}running_var" in state for b in bases)


def calibrated_widths_in(state: Mapping[str, torch.Tensor]) -> list[float]:
    """Widths (other than the native one) with statistics for every BN layer of a state dict."""
    bases = bn_layers(state) or sorted({m.group(1) for m in map(_WIDTH_STATS.match, state) if m})
    per_layer: dict[str, set[float]] = {b: set() for b in bases}
    for k in state:
        m = _WIDTH_STATS.match(k)
        if m and m.group(1) in per_layer and f"{m.group(1)}running_var_w{m.group(3)}" in state:
            per_layer[m.group(1)].add(int(m.group(3)) / 1000)
    if not per_layer:
        return []
    return sorted(set.intersection(*per_layer.values()))


def select_width_stats(state: Mapping[str, torch.Tensor], width: float, policy: str = "calibrated",
                       calibrated: list[float] | None = None, native_width: float = 1.0
                       ) -> dict[str, torch.Tensor]:
    """State dict whose ``running_mean/var`` are the statistics of ``width``; per-width keys dropped.

    ``policy="calibrated"`` requires statistics calibrated for ``width`` (never another width's, never
    placeholders): per-width keys, or the standard keys when ``width`` is ``native_width`` (1.0; a
    fixed-width file's own width) and listed in ``calibrated`` (default: present in ``state``).
    ``policy="reset"`` starts from mean 0 / var 1, for fine-tuning that re-estimates them.
    """
    if policy not in BN_STATS_POLICIES:
        raise ValueError(f"unknown BN statistics policy {policy!r}; choose from {BN_STATS_POLICIES}")
    out = {k: v for k, v in state.items() if not _WIDTH_STATS.match(k)}
    bases = bn_layers(state)
    if policy == "reset":
        for base in bases:
            out[base + "running_mean"] = torch.zeros_like(state[base + "weight"])
            out[base + "running_var"] = torch.ones_like(state[base + "weight"])
        return out
    native = abs(float(width) - native_width) < 1e-9
    if calibrated is None:
        calibrated = calibrated_widths_in(state) + ([native_width] if has_native_stats(state) else [])
    missing = []
    if native:
        if native_width not in calibrated or not has_native_stats(state):
            missing = bases
    else:
        key = width_key(width)
        for base in bases:
            mean_k, var_k = f"{base}running_mean_w{key}", f"{base}running_var_w{key}"
            if mean_k in state and var_k in state:
                out[base + "running_mean"], out[base + "running_var"] = state[mean_k], state[var_k]
            else:
                missing.append(base)
    if missing:
        raise UncalibratedWidthError(
            f"the checkpoint has no BN statistics calibrated for width {width} ({len(missing)} BN layers, e.g. "
            f"{missing[0]!r}); calibrated widths: {sorted(calibrated) or 'none'}. Calibrate that width "
            "(tools/calibrate_bn.py) or choose BN statistics policy 'reset' to re-estimate them while fine-tuning")
    return out


def slice_to_shapes(state: Mapping[str, torch.Tensor], shapes: Mapping[str, torch.Size],
                    ) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Prefix-slice each tensor of ``state`` to the shape the model holds under the same name."""
    report = LoadReport()
    out = {}
    for name, shape in shapes.items():
        if name not in state:
            report.missing.append(name)
            continue
        src = torch.as_tensor(state[name])
        shape = tuple(shape)
        if tuple(src.shape) == shape:
            out[name] = src
        elif src.dim() == len(shape) and all(s >= t for s, t in zip(src.shape, shape)):
            out[name] = src[tuple(slice(0, t) for t in shape)].clone()
            report.sliced.append(name)
        else:
            report.mismatched.append(f"{name}: checkpoint {tuple(src.shape)} vs model {shape}")
            continue
        report.loaded.append(name)
    report.unexpected = [k for k in state if k not in shapes]
    return out, report
