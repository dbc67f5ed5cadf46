# Faster R-CNN C4 on a US3L ResNet-50 at one width (res2-res4 in the backbone, res5 as the RoI shared head),
# SSL transfer protocol (MoCo): SyncBN, nothing frozen, RGB input with ImageNet mean/std. Width: `--width W` of
# projects/*/mmdet_train.py; pretrained file: tools/convert_pretrain_to_mmdet.py (the same file initialises the
# backbone and the shared head).
_base_ = 'mmdet::_base_/models/faster-rcnn_r50-caffe-c4.py'
custom_imports = dict(imports=['us3l.mmdet'], allow_failed_imports=False)

norm_cfg = dict(type='SyncBN', requires_grad=True)
pretrained = 'checkpoints/us3l_r50_mmdet.pth'
model = dict(
    data_preprocessor=dict(
        mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], bgr_to_rgb=True),
    backbone=dict(
        _delete_=True,
        type='US3LResNet',
        depth=50,
        width_mult=1.0,
        num_stages=3,
        out_indices=(2, ),
        frozen_stages=-1,
        norm_cfg=norm_cfg,
        norm_eval=False,
        bn_stats='calibrated',
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    rpn_head=dict(in_channels=1024, feat_channels=1024),
    roi_head=dict(
        shared_head=dict(
            _delete_=True,
            type='US3LResLayer',
            depth=50,
            stage=3,
            width_mult=1.0,
            norm_cfg=norm_cfg,
            norm_eval=False,
            bn_stats='calibrated',
            init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
        bbox_roi_extractor=dict(out_channels=1024),
        bbox_head=dict(in_channels=2048)))
