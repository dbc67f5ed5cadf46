"""Cost of a slimmable backbone per width: FLOPs (fvcore), parameters and CPU latency.

Costs are measured on the fixed-width twin (:func:`us3l.models.build_static_model`), which is what a
deployed model at that width runs; the slimmable model computes exactly the same convolutions.
FLOPs follow fvcore's convention (one fused multiply-add counts as one flop).
"""
from __future__ import annotations

import statistics
import time

import torch
from fvcore.nn import FlopCountAnalysis

from .models import build_static_model


def count_gflops(model: torch.nn.Module, inputs: torch.Tensor) -> float:
    analysis = FlopCountAnalysis(model, inputs)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return analysis.total() / 1e9


@torch.no_grad()
def measure_latency_ms(model: torch.nn.Module, inputs: torch.Tensor, runs: int = 10, warmup: int = 2) -> float:
    """Median wall time of a forward pass in milliseconds."""
    for _ in range(warmup):
        model(inputs)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        model(inputs)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def profile_width(arch: str, width: float, image_size: int = 224, batch_size: int = 1, runs: int = 10,
                  cifar_stem: bool = False) -> dict:
    """FLOPs, parameters and CPU latency of the ``arch`` backbone (no classifier) at ``width``."""
    model = build_static_model(arch, width, num_classes=0, cifar_stem=cifar_stem).eval()
    x = torch.randn(batch_size, 3, image_size, image_size)
    return {
        "arch": arch,
        "width": width,
        "gflops": count_gflops(model, x[:1]),
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "latency_ms": measure_latency_ms(model, x, runs=runs) if runs > 0 else float("nan"),
        "input": f"{batch_size}x3x{image_size}x{image_size}",
    }
