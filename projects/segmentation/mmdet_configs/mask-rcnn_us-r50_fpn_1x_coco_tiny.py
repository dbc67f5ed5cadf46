# Tiny variant on the embedded synthetic dataset (4 shape classes; tools/make_embedded_dataset.py writes it to
# $US3L_DATASETS/us3l_shapes): 128-px inputs, smaller anchors, plain BN, a 12-epoch schedule that runs on a CPU
# (dataset, schedule and runtime: projects/mmdet_base/tiny_instance.py).
_base_ = ['../../mmdet_base/models/mask-rcnn_us-r50_fpn.py', '../../mmdet_base/tiny_instance.py']

norm_cfg = dict(type='BN', requires_grad=True)  # SyncBN needs a process group
model = dict(
    train_cfg=_base_.tiny_train_cfg, test_cfg=_base_.tiny_test_cfg,  # counts for 128-px images
    backbone=dict(norm_cfg=norm_cfg),
    neck=dict(norm_cfg=norm_cfg),
    rpn_head=dict(anchor_generator=dict(scales=[4])),
    roi_head=dict(bbox_head=dict(num_classes=4), mask_head=dict(num_classes=4)))
