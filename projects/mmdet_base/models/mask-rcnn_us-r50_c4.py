# Mask R-CNN C4 on a US3L ResNet-50 at one width: the Faster R-CNN C4 model (faster-rcnn_us-r50_c4.py: backbone,
# res5 shared head, SyncBN, pretrained file, width) plus the mask branch of mmdet's
# _base_/models/mask-rcnn_r50-caffe-c4.py (the mask head reads the shared head's 2048 channels).
_base_ = './faster-rcnn_us-r50_c4.py'

model = dict(
    type='MaskRCNN',
    data_preprocessor=dict(pad_mask=True),
    roi_head=dict(
        mask_roi_extractor=None,
        mask_head=dict(
            type='FCNMaskHead',
            num_convs=0,
            in_channels=2048,
            conv_out_channels=256,
            num_classes=80,
            loss_mask=dict(type='CrossEntropyLoss', use_mask=True, loss_weight=1.0))),
    train_cfg=dict(rpn=dict(allowed_border=0), rcnn=dict(mask_size=14)),
    test_cfg=dict(rcnn=dict(mask_thr_binary=0.5)))
