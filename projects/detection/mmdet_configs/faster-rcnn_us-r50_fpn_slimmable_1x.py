# ONE Faster R-CNN for every width (model: projects/mmdet_base/models/faster-rcnn_us-r50_fpn_slimmable.py), COCO 1x:
# each iteration trains max, min and 2 random widths, gradient clipping at 35 (slimmed FPNs diverge without it).
_base_ = [
    '../../mmdet_base/models/faster-rcnn_us-r50_fpn_slimmable.py', 'mmdet::_base_/datasets/coco_detection.py',
    'mmdet::_base_/schedules/schedule_1x.py', '../../mmdet_base/default_runtime.py'
]

optim_wrapper = dict(clip_grad=dict(max_norm=35, norm_type=2))
val_cfg = None  # BN statistics exist per width only after calibration: evaluate with tools/eval_widths.py
val_dataloader = None
val_evaluator = None
test_evaluator = dict(prefix='w1.00')
