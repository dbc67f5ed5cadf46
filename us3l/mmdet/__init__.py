"""MMDetection 3.x glue: importing this module registers the US3L backbones, C4 head, width hook and the
universally slimmable detector's components, and makes mmengine read local checkpoints weights-only
(:mod:`.safe_checkpoints`).

Configs name it in ``custom_imports = dict(imports=['us3l.mmdet'], allow_failed_imports=False)``.
``import us3l`` never imports MMDetection; this subpackage needs mmdet 3.x / mmengine / mmcv.
"""
try:
    import mmdet  # noqa: F401
    import mmengine  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the installation
    raise ImportError("us3l.mmdet needs MMDetection 3.x (pip install 'us3l[mmdet]': mmengine, mmcv, mmdet); "
                      f"importing it failed: {e}") from e

from . import safe_checkpoints  # noqa: F401  (mmengine's local checkpoint reading: weights-only, process-wide)
from .backbone import US3LResNet
from .export import export_detector
from .hooks import RNGStateHook, WidthMetricsHook
from .loops import US3LEpochBasedTrainLoop
from .shared_head import US3LResLayer
from .slimmable_backbone import US3LSlimmableResNet
from .slimmable_detector import SandwichDistributedDataParallel, SlimmableFasterRCNN, SlimmableMaskRCNN
from .slimmable_eval import calibrate_widths, evaluate_widths, load_slimmable_detector, save_slimmable_detector
from .slimmable_heads import (
    SlimmableFCNMaskHead,
    SlimmableFPN,
    SlimmableRPNHead,
    SlimmableShared2FCBBoxHead,
    SlimmableSingleRoIExtractor,
)
from .width_config import apply_width, check_width_consistency, detector_width, width_tag

__all__ = ["US3LResNet", "US3LResLayer", "WidthMetricsHook", "RNGStateHook", "US3LEpochBasedTrainLoop", "apply_width",
           "check_width_consistency", "detector_width", "width_tag",
           # the universally slimmable detector (one model, any width)
           "US3LSlimmableResNet", "SlimmableFPN", "SlimmableRPNHead", "SlimmableSingleRoIExtractor",
           "SlimmableShared2FCBBoxHead", "SlimmableFCNMaskHead", "SlimmableFasterRCNN", "SlimmableMaskRCNN",
           "SandwichDistributedDataParallel",
           # its Python API (Detectron2's twins, same names, in us3l.d2)
           "load_slimmable_detector", "calibrate_widths", "evaluate_widths", "save_slimmable_detector",
           "export_detector"]
