# What every tiny Faster R-CNN config (projects/detection/mmdet_configs/*_tiny.py) runs on: the embedded synthetic
# dataset (boxes), the 12-epoch schedule and the CPU runtime. The config adds its model and the model's tweaks.
_base_ = ['./datasets/us3l_shapes_detection.py', './schedules/tiny_12e.py', './cpu_runtime.py']
