"""Whole-detector cost per width with fvcore (one fused multiply-add = one flop, as ``us3l.profiling``).

Frameworks hand over a ready ``fvcore`` analysis factory, because tracing a detector needs their own input
adapters (Detectron2 ``detectron2.utils.analysis.FlopCountAnalysis``, MMDetection's ``get_model_complexity_info``
is not fvcore). The width is set on the whole detector for each count and restored afterwards.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch.nn as nn

from ..width import width as width_ctx


def fvcore_total_gflops(analysis) -> float:
    """Total of an fvcore ``FlopCountAnalysis`` in GFLOPs, with its per-op warnings silenced."""
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return analysis.total() / 1e9


def gflops_per_width(model: nn.Module, widths: Sequence[float],
                     make_analysis: Callable[[], object]) -> dict[float, float]:
    """``{width: GFLOPs}``: ``make_analysis()`` builds an fvcore analysis of ``model`` at the current width."""
    out = {}
    for w in widths:
        with width_ctx(model, w) as cw:
            out[cw] = fvcore_total_gflops(make_analysis())
    return out
