# ONE Mask R-CNN for every width (model: projects/mmdet_base/models/mask-rcnn_us-r50_fpn_slimmable.py), COCO 1x:
# each iteration trains max, min and 2 random widths, gradient clipping at 35 (slimmed FPNs diverge without it).
_base_ = [
    '../../mmdet_base/models/mask-rcnn_us-r50_fpn_slimmable.py', 'mmdet::_base_/datasets/coco_instance.py',
    '../../mmdet_base/schedules/sandwich_1x.py', '../../mmdet_base/default_runtime.py'
]

val_dataloader = None  # no validation loop: see the schedule
val_evaluator = None
test_evaluator = dict(prefix='w1.00')
