"""Detectron2 glue for US3L backbones. Importing this package registers everything:

* backbones ``build_us3l_resnet_backbone`` (C4 trunk) and ``build_us3l_resnet_fpn_backbone``,
* ROI heads ``US3LRes5ROIHeads`` (C4 models: a width-sized res5),
* the universally slimmable detector, laid out as its MMDetection twin: backbone
  ``build_us3l_slimmable_resnet_fpn_backbone`` (:mod:`.slimmable_backbone`), RPN head ``US3LSlimmableRPNHead`` and
  ROI heads ``US3LSlimmableROIHeads`` (:mod:`.slimmable_heads`), its loader (:mod:`.slimmable_checkpoint`), export to
  a plain detector (:mod:`.export`) and sandwich trainer (:mod:`.sandwich`),
* datasets ``us3l_shapes_train`` / ``us3l_shapes_val`` (``$US3L_DATASETS/us3l_shapes``),

and provides ``add_us3l_config`` (``MODEL.US3L.WIDTH_MULT / WIDTH_RANGE / BN_STATS``; call it on ``get_cfg()``
before ``merge_from_file``), the loader
``US3LCheckpointer`` (the converted ``.pkl`` format lives in :mod:`us3l.checkpoint.d2_format`; the trainer
that uses it is ``US3LTrainer``, :mod:`us3l.d2.trainer`), and the slimmable detector's Python API:
``load_slimmable_detector``, ``calibrate_widths``, ``evaluate_widths``, ``save_slimmable_detector``,
``export_plain_detector`` (MMDetection's twins have the same names in :mod:`us3l.mmdet`).
``import us3l`` alone never imports Detectron2.
"""
from ..checkpoint.d2_format import META_KEY, backbone_to_d2, read_pkl, write_pkl
from .backbone import US3LResNet, build_us3l_resnet_backbone, build_us3l_resnet_fpn_backbone, find_us3l_resnet
from .checkpoint import US3LCheckpointer
from .config import add_us3l_config, bn_stats_policy, load_config, us3l_width
from .datasets import DatasetFilesError, check_datasets, register_coco_json, register_us3l_datasets
from .detector_tools import calibrate_widths, evaluate_widths, load_slimmable_detector, save_slimmable_detector
from .evaluation import build_coco_evaluator, width_tag
from .export import export_plain_detector
from .roi_heads import US3LRes5ROIHeads
from .slimmable_backbone import build_us3l_slimmable_resnet_fpn_backbone
from .slimmable_checkpoint import SlimmableDetectorCheckpointer
from .slimmable_heads import US3LSlimmableROIHeads, US3LSlimmableRPNHead
from .trainer import US3LTrainer

register_us3l_datasets()

__all__ = ["US3LResNet", "build_us3l_resnet_backbone", "build_us3l_resnet_fpn_backbone", "find_us3l_resnet",
           "US3LCheckpointer", "add_us3l_config", "bn_stats_policy", "load_config", "us3l_width", "DatasetFilesError",
           "check_datasets", "register_coco_json", "register_us3l_datasets", "build_coco_evaluator", "width_tag",
           "META_KEY", "backbone_to_d2", "read_pkl", "write_pkl", "US3LRes5ROIHeads", "SlimmableDetectorCheckpointer",
           "US3LSlimmableROIHeads", "US3LSlimmableRPNHead", "build_us3l_slimmable_resnet_fpn_backbone",
           "export_plain_detector", "load_slimmable_detector", "calibrate_widths", "evaluate_widths",
           "save_slimmable_detector", "US3LTrainer"]
