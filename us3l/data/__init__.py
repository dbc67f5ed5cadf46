"""Data: the embedded synthetic dataset, standard datasets, two-view augmentations, resumable batching."""
from .datasets import (
                       DATASETS,
                       ImageList,
                       ResumableBatchSampler,
                       TwoViewDataset,
                       build_dataset,
                       detect_kind,
                       prepare_embedded,
)
from .paths import datasets_root, embedded_root
from .transforms import RECIPES, TwoViews, eval_transform, ssl_transform

__all__ = ["DATASETS", "detect_kind", "ImageList", "ResumableBatchSampler", "TwoViewDataset", "build_dataset",
           "datasets_root", "embedded_root", "prepare_embedded",
           "RECIPES", "TwoViews", "eval_transform", "ssl_transform"]
