# ONE Mask R-CNN for every width: the US-ResNet-50 itself (not a width-sized copy), FPN, RPN head and RoI box/mask
# heads all run at the width set with us3l.set_width (us3l.mmdet.slimmable_*). Fine-tuned with the sandwich rule
# (max, min and `num_random` random widths per iteration, one optimizer step); BN statistics are calibrated per
# width after training (tools/calibrate_detector.py) and a width without them is refused at evaluation.
# `slim_neck_and_heads=False` slims only the backbone (FPN laterals still take its active channels).
_base_ = 'mmdet::_base_/models/mask-rcnn_r50_fpn.py'
custom_imports = dict(imports=['us3l.mmdet'], allow_failed_imports=False)

norm_cfg = dict(type='BN', requires_grad=True)  # per-width BN (batch statistics per process while training)
pretrained = 'checkpoints/us3l_r50_mmdet.pth'
model = dict(
    type='SlimmableMaskRCNN',
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
        bbox_head=dict(type='SlimmableShared2FCBBoxHead'),
        mask_roi_extractor=dict(type='SlimmableSingleRoIExtractor'),
        mask_head=dict(type='SlimmableFCNMaskHead')))
# under DDP the wrapper runs the sandwich step (plain DDP would train one width)
model_wrapper_cfg = dict(type='SandwichDistributedDataParallel')
