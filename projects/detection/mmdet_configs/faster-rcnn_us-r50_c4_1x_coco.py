# Faster R-CNN C4, US3L ResNet-50 at one width, COCO 1x, SSL transfer protocol (MoCo)
# (model: projects/mmdet_base/models/faster-rcnn_us-r50_c4.py).
_base_ = [
    '../../mmdet_base/models/faster-rcnn_us-r50_c4.py', 'mmdet::_base_/datasets/coco_detection.py',
    'mmdet::_base_/schedules/schedule_1x.py', '../../mmdet_base/default_runtime.py'
]

val_evaluator = dict(prefix='w1.00')
test_evaluator = val_evaluator
