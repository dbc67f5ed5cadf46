"""Every checkpoint file format the project meets, and fitting one full-width backbone to one width.

Formats: ours and torchvision's (:mod:`.io`), the reference code's (:mod:`.reference`), Detectron2's
(:mod:`.d2_format`), MMDetection's (:mod:`.mmdet_format`); conversion between the two frameworks
(:mod:`.frameworks`); the fit both detection plugins use (:mod:`.fit`); slimmable models (:mod:`.model_io`).
"""
from .arch import infer_arch
from .fit import check_detection_backbone, check_width_in_range, fit_backbone
from .io import (
                 BACKBONE_FORMAT,
                 PRETRAIN_FORMAT,
                 atomic_save,
                 extract_backbone,
                 load_backbone,
                 read_checkpoint,
                 save_backbone,
)
from .report import CheckpointError, LoadReport
from .slicing import BN_STATS_POLICIES, calibrated_widths_in, select_width_stats, slice_to_shapes

__all__ = ["BACKBONE_FORMAT", "PRETRAIN_FORMAT", "atomic_save", "extract_backbone", "infer_arch", "load_backbone",
           "read_checkpoint", "save_backbone", "CheckpointError", "LoadReport", "BN_STATS_POLICIES",
           "calibrated_widths_in", "select_width_stats", "slice_to_shapes", "check_detection_backbone",
           "check_width_in_range", "fit_backbone"]
