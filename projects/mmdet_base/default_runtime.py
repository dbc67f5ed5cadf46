# MMDetection's runtime plus the per-width metrics hook (metric names w<width>/..., metrics_w<width>.json).
_base_ = 'mmdet::_base_/default_runtime.py'

custom_hooks = [dict(type='WidthMetricsHook')]
