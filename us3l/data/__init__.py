"""Data: the embedded synthetic dataset, standard datasets, two-view augmentations, resumable batching."""
from .datasets import (DATASETS, ImageList, ResumableBatchSampler, TwoViewDataset, build_dataset, detect_kind,
                       embedded_root,
                       prepare_embedded)
from .transforms import RECIPES, TwoViews, eval_transform, ssl_transform

__all__ = ["DATASETS", "detect_kind", "ImageList", "ResumableBatchSampler", "TwoViewDataset", "build_dataset",
           "embedded_root", "prepare_embedded", "RECIPES", "TwoViews", "eval_transform", "ssl_transform"]
