# Runtime of the CPU runs on the embedded set: gloo for torchrun, a log line every 10 iterations, a checkpoint
# every 4 epochs.
_base_ = './default_runtime.py'

default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=4))
env_cfg = dict(dist_cfg=dict(backend='gloo'))
