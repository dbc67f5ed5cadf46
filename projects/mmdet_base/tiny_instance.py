# What every tiny Mask R-CNN config (projects/segmentation/mmdet_configs/*_tiny.py) runs on: the embedded synthetic
# dataset with masks, the 12-epoch schedule and the CPU runtime. The config adds its model and the model's tweaks.
_base_ = ['./datasets/us3l_shapes_instance.py', './schedules/tiny_12e.py', './cpu_runtime.py']
