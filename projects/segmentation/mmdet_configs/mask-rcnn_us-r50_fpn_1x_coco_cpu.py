# CPU / single-process variant: plain BN (SyncBN needs a process group), small batches, gloo.
_base_ = './mask-rcnn_us-r50_fpn_1x_coco.py'

norm_cfg = dict(type='BN', requires_grad=True)
model = dict(backbone=dict(norm_cfg=norm_cfg), neck=dict(norm_cfg=norm_cfg))
train_dataloader = dict(batch_size=2, num_workers=2)
val_dataloader = dict(batch_size=1, num_workers=1)
test_dataloader = val_dataloader
env_cfg = dict(dist_cfg=dict(backend='gloo'))
