"""MMDetection 3.x glue: importing this module registers the US3L backbone, C4 head and width hook.

Configs name it in ``custom_imports = dict(imports=['us3l.mmdet'], allow_failed_imports=False)``.
``import us3l`` never imports MMDetection; this subpackage needs mmdet 3.x / mmengine / mmcv.
"""
try:
    import mmdet  # noqa: F401
    import mmengine  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the installation
    raise ImportError("us3l.mmdet needs MMDetection 3.x (pip install 'us3l[mmdet]': mmengine, mmcv, mmdet); "
                      f"importing it failed: {e}") from e

from .backbone import US3LResNet
from .hooks import WidthMetricsHook
from .shared_head import US3LResLayer
from .width_config import apply_width, check_width_consistency, detector_width, width_tag

__all__ = ["US3LResNet", "US3LResLayer", "WidthMetricsHook", "apply_width", "check_width_consistency",
           "detector_width", "width_tag"]
