# tiny_12e.py for the one detector of every width: gradient clipping and no validation loop, as sandwich_1x.py.
_base_ = './tiny_12e.py'

optim_wrapper = dict(clip_grad=dict(max_norm=35, norm_type=2))
val_cfg = None
