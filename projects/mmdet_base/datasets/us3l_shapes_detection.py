# The embedded synthetic dataset (4 shape classes; tools/make_embedded_dataset.py writes it to
# $US3L_DATASETS/us3l_shapes) in COCO format, boxes only: 128-px inputs, small batches for a CPU.
_base_ = 'mmdet::_base_/datasets/coco_detection.py'

data_root = '{{$US3L_DATASETS:datasets}}/us3l_shapes/'
metainfo = dict(classes=('circle', 'square', 'triangle', 'cross'))  # us3l.data.synthetic.CLASS_NAMES
img_scale = (128, 128)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=False),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=False),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
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
# the same loader settings and dataset location on the training split
train_dataloader = dict(
    val_dataloader,
    batch_size=4,
    dataset=dict(
        val_dataloader['dataset'],
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=4),
        pipeline=train_pipeline))
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json', metric='bbox', prefix='w1.00')
test_evaluator = val_evaluator

# Proposal and RoI counts scaled to these images, for the model's train_cfg / test_cfg (the tiny configs set
# `train_cfg=_base_.tiny_train_cfg, test_cfg=_base_.tiny_test_cfg`), the counts of the tiny Detectron2 configs:
# mmdet's defaults (2000 proposals per level before NMS, 512 RoIs per image) cover about every anchor of a 128-px
# image (a CPU sandwich step 0.2x as long with these: bench/tiny_detector_mmdet.md).
tiny_train_cfg = dict(
    rpn=dict(sampler=dict(num=64)),
    rpn_proposal=dict(nms_pre=400, max_per_img=200),
    rcnn=dict(sampler=dict(num=32)))
tiny_test_cfg = dict(rpn=dict(nms_pre=200, max_per_img=100))
