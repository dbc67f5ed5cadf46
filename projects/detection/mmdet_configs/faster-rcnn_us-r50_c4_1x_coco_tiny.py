# Tiny variant on the embedded synthetic dataset (4 shape classes; tools/make_embedded_dataset.py writes it to
# $US3L_DATASETS/us3l_shapes): 128-px inputs, smaller anchors, plain BN, a 12-epoch schedule that runs on a CPU
# (dataset, schedule and runtime: projects/mmdet_base/tiny_detection.py).
_base_ = ['../../mmdet_base/models/faster-rcnn_us-r50_c4.py', '../../mmdet_base/tiny_detection.py']

norm_cfg = dict(type='BN', requires_grad=True)  # SyncBN needs a process group
model = dict(
    train_cfg=_base_.tiny_train_cfg, test_cfg=_base_.tiny_test_cfg,  # counts for 128-px images
    backbone=dict(norm_cfg=norm_cfg),
    rpn_head=dict(anchor_generator=dict(scales=[1, 2, 4, 8])),
    roi_head=dict(shared_head=dict(norm_cfg=norm_cfg), bbox_head=dict(num_classes=4)))
