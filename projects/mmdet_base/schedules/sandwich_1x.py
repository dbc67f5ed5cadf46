# mmdet's 1x schedule for the one detector of every width (sandwich fine-tuning): gradient clipping at 35 (slimmed
# FPNs diverge without it) and no validation loop (BN statistics exist per width only after calibration: evaluate
# with tools/eval_widths.py; leaves set val_dataloader / val_evaluator to None with it).
_base_ = 'mmdet::_base_/schedules/schedule_1x.py'

optim_wrapper = dict(clip_grad=dict(max_norm=35, norm_type=2))
val_cfg = None
