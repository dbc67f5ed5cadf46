# 12 epochs on the embedded set (mmdet's 1x schedule with a shorter warm-up, half the learning rate for batch 4,
# validation every 4 epochs): what runs on a CPU.
_base_ = 'mmdet::_base_/schedules/schedule_1x.py'

optim_wrapper = dict(optimizer=dict(lr=0.01))
train_cfg = dict(max_epochs=12, val_interval=4)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=50),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1)
]
