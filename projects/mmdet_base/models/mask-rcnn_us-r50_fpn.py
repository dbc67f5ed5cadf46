# Mask R-CNN + FPN on a US3L ResNet-50 at one width, SSL transfer protocol (MoCo): SyncBN in backbone and FPN,
# nothing frozen, BN statistics trained. The width: `--width W` of projects/*/mmdet_train.py (us3l.mmdet.apply_width
# updates every channel count that follows it). The pretrained file: tools/convert_pretrain_to_mmdet.py SRC DST.pth,
# then --cfg-options model.backbone.init_cfg.checkpoint=DST.pth
_base_ = 'mmdet::_base_/models/mask-rcnn_r50_fpn.py'
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
