"""Checkpoint formats, per-width slicing and load reports (see :mod:`us3l.checkpoint.io` for formats)."""
from .io import (BACKBONE_FORMAT, PRETRAIN_FORMAT, atomic_save, extract_backbone, infer_arch, load_backbone,
                 read_checkpoint, save_backbone)
from .report import CheckpointError, LoadReport
from .slicing import BN_STATS_POLICIES, calibrated_widths_in, select_width_stats, slice_to_shapes

__all__ = ["BACKBONE_FORMAT", "PRETRAIN_FORMAT", "atomic_save", "extract_backbone", "infer_arch", "load_backbone",
           "read_checkpoint", "save_backbone", "CheckpointError", "LoadReport", "BN_STATS_POLICIES",
           "calibrated_widths_in", "select_width_stats", "slice_to_shapes"]
