"""Rows of the per-width evaluation table of ONE slimmable detector (``tools/eval_widths.py``), the same fields
whichever framework evaluated it, so that results tables and plots read both alike."""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from ..models import build_static_model


def width_row(width: float, arch: str, weights: str, box: Mapping | None = None, mask: Mapping | None = None) -> dict:
    """AP of one width; ``box`` / ``mask``: COCO ``{"AP": ..., "AP50": ...}`` in percent (absent: None)."""
    box, mask = box or {}, mask or {}
    return {"width": width, "box_AP": box.get("AP"), "mask_AP": mask.get("AP"), "box_AP50": box.get("AP50"),
            "mask_AP50": mask.get("AP50"), "arch": arch, "weights": os.path.abspath(weights)}


def add_cost(row: dict, detector_gflops: float, backbone_gflops: float, input_shape: Sequence[int]) -> dict:
    """Add the cost columns: GFLOPs measured at the row's width on an input of ``input_shape`` and the
    parameters (millions) of the backbone exported at that width."""
    row["detector_gflops"] = detector_gflops
    row["backbone_gflops"] = row["gflops"] = backbone_gflops
    row["params_m"] = sum(p.numel() for p in build_static_model(row["arch"], row["width"], 0).parameters()) / 1e6
    row["profile_input"] = "x".join(str(s) for s in input_shape)
    return row
