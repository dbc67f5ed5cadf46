# Mask R-CNN, US3L ResNet-50 at one width + FPN, COCO 1x, SSL transfer protocol (MoCo):
# SyncBN in backbone and FPN, nothing frozen, BN statistics trained, RGB input with ImageNet mean/std.
# The width: `--width W` of projects/segmentation/mmdet_train.py (updates every channel count that follows it).
# The pretrained file: tools/convert_pretrain_to_mmdet.py SRC DST.pth, then
#   --cfg-options model.backbone.init_cfg.checkpoint=DST.pth
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['us3l.mmdet'], allow_failed_imports=False)

norm_cfg = dict(type='SyncBN', requires_grad=True)
pretrained = 'checkpoints/us3l_r50_mmdet.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='US3LResNet',
        depth=50,
        width_mult=1.0,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        frozen_stages=-1,
        norm_cfg=norm_cfg,
        norm_eval=False,
        bn_stats='calibrated',
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    neck=dict(in_channels=[256, 512, 1024, 2048], norm_cfg=norm_cfg))

custom_hooks = [dict(type='WidthMetricsHook')]
val_evaluator = dict(prefix='w1.00')
test_evaluator = val_evaluator
