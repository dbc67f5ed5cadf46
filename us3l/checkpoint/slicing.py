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


def calibrated_widths_in(state: Mapping[str, torch.Tensor]) -> list[float]:
    """Widths (other than 1.0) with statistics for every BN layer of a state dict."""
    per_layer: dict[str, set[float]] = {k[: -len("running_mean")]: set() for k in state
                                        if k.endswith("running_mean")}
    for k in state:
        m = _WIDTH_STATS.match(k)
        if m and m.group(1) in per_layer:
            per_layer[m.group(1)].add(int(m.group(3)) / 1000)
    if not per_layer:
        return []
    return sorted(set.intersection(*per_layer.values()))


def select_width_stats(state: Mapping[str, torch.Tensor], width: float, policy: str = "calibrated"
                       ) -> dict[str, torch.Tensor]:
    """State dict whose ``running_mean/var`` are the statistics of ``width``; per-width keys dropped.

    ``policy="calibrated"`` requires calibrated statistics for ``width`` (never another width's);
    ``policy="reset"`` starts from mean 0 / var 1 (for fine-tuning that re-estimates them).
    """
    if policy not in BN_STATS_POLICIES:
        raise ValueError(f"unknown BN statistics policy {policy!r}; choose from {BN_STATS_POLICIES}")
    out = {k: v for k, v in state.items() if not _WIDTH_STATS.match(k)}
    if float(width) >= 1.0 and policy == "calibrated":
        return out
    key = width_key(width)
    bases = [k[: -len("running_mean")] for k in out if k.endswith("running_mean")]
    missing = []
    for base in bases:
        mean_k, var_k = f"{base}running_mean_w{key}", f"{base}running_var_w{key}"
        if policy == "reset":
            out[base + "running_mean"] = torch.zeros_like(out[base + "running_mean"])
            out[base + "running_var"] = torch.ones_like(out[base + "running_var"])
        elif mean_k in state and var_k in state:
            out[base + "running_mean"], out[base + "running_var"] = state[mean_k], state[var_k]
        else:
            missing.append(base)
    if missing:
        have = calibrated_widths_in(state)
        raise UncalibratedWidthError(
            f"the checkpoint has no BN statistics calibrated for width {width} ({len(missing)} BN layers, e.g. "
            f"{missing[0]!r}); calibrated widths: {have + [1.0]}. Calibrate that width "
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
