# ONE Faster R-CNN for every width (see mask-rcnn_us-r50_fpn_slimmable.py): US-ResNet-50, FPN, RPN head and RoI
# box head at the width set with us3l.set_width; sandwich fine-tuning; BN calibrated per width after training.
_base_ = 'mmdet::_base_/models/faster-rcnn_r50_fpn.py'
custom_imports = dict(imports=['us3l.mmdet'], allow_failed_imports=False)

norm_cfg = dict(type='BN', requires_grad=True)  # per-width BN (batch statistics per process while training)
pretrained = 'checkpoints/us3l_r50_mmdet.pth'
model = dict(
    type='SlimmableFasterRCNN',
    width_range=(0.25, 1.0),
    slim_neck_and_heads=True,
    sandwich=dict(num_random=2, distill=True, distill_weight=1.0, seed=None),  # seed None: randomness.seed
    backbone=dict(
        _delete_=True,
        type='US3LSlimmableResNet',
        depth=50,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        frozen_stages=-1,
        norm_cfg=norm_cfg,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    neck=dict(type='SlimmableFPN', in_channels=[256, 512, 1024, 2048], norm_cfg=norm_cfg),
    rpn_head=dict(type='SlimmableRPNHead'),
    roi_head=dict(
        bbox_roi_extractor=dict(type='SlimmableSingleRoIExtractor'),
        bbox_head=dict(type='SlimmableShared2FCBBoxHead')))
# under DDP the wrapper runs the sandwich step (plain DDP would train one width)
model_wrapper_cfg = dict(type='SandwichDistributedDataParallel')
