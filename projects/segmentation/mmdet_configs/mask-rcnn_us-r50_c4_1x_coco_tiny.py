# Tiny variant on the embedded synthetic dataset (4 shape classes; tools/make_embedded_dataset.py writes it to
# $US3L_DATASETS/us3l_shapes): 128-px inputs, smaller anchors, a 12-epoch schedule that runs on a CPU.
_base_ = './mask-rcnn_us-r50_c4_1x_coco_cpu.py'

data_root = '{{$US3L_DATASETS:datasets}}/us3l_shapes/'
metainfo = dict(classes=('circle', 'square', 'triangle', 'cross'))  # us3l.data.synthetic.CLASS_NAMES
img_scale = (128, 128)

model = dict(
    rpn_head=dict(anchor_generator=dict(scales=[1, 2, 4, 8])),
    roi_head=dict(bbox_head=dict(num_classes=4), mask_head=dict(num_classes=4)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=4),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=2,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json', metric=['bbox', 'segm'])
test_evaluator = val_evaluator

optim_wrapper = dict(optimizer=dict(lr=0.01))
train_cfg = dict(max_epochs=12, val_interval=4)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=50),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1)
]
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=4))
