# Tiny variant on the embedded synthetic dataset (CPU): 128-px inputs, smaller anchors, the 12-epoch schedule,
# gradient clipping at 35. Evaluate any width after calibration (tools/calibrate_detector.py, tools/eval_widths.py).
_base_ = [
    '../../mmdet_base/models/faster-rcnn_us-r50_fpn_slimmable.py', '../../mmdet_base/datasets/us3l_shapes_detection.py',
    '../../mmdet_base/schedules/sandwich_tiny_12e.py', '../../mmdet_base/cpu_runtime.py'
]

model = dict(
    train_cfg=_base_.tiny_train_cfg, test_cfg=_base_.tiny_test_cfg,  # counts for 128-px images
    rpn_head=dict(anchor_generator=dict(scales=[4])),
    roi_head=dict(bbox_head=dict(num_classes=4)))

val_dataloader = None  # no validation loop: see the schedule
val_evaluator = None
