"""Test-time resizing with the library MMDetection uses, so a detector converted from MMDetection sees the same
pixels in Detectron2.

Detectron2 resizes uint8 images with PIL (antialiased when shrinking); mmcv resizes with cv2 by default (no
antialiasing). On small images the two give visibly different inputs (+1.35 box AP at 1.0 for one converted
detector, ``bench/cross_framework.md``). ``INPUT.RESIZE_BACKEND`` (a key of :func:`us3l.d2.add_us3l_config`,
"pillow" by default, as Detectron2) selects the library of the TEST resize used by this plugin's evaluation,
calibration images and demo; the shortest-edge size rule is Detectron2's either way. Training augmentation is
Detectron2's own.
"""
from __future__ import annotations

import numpy as np
from detectron2.data import transforms as T
from PIL import Image

RESIZE_BACKENDS = ("pillow", "cv2")


class CV2ResizeTransform(T.ResizeTransform):
    """:class:`ResizeTransform` whose bilinear image resize is cv2's ``INTER_LINEAR`` (mmcv's ``imresize``)."""

    def apply_image(self, img, interp=None):
        if img.dtype != np.uint8 or (interp if interp is not None else self.interp) != Image.BILINEAR:
            return super().apply_image(img, interp)
        import cv2

        return cv2.resize(img, (self.new_w, self.new_h), interpolation=cv2.INTER_LINEAR).reshape(
            self.new_h, self.new_w, *img.shape[2:])


class CV2ResizeShortestEdge(T.ResizeShortestEdge):
    """Detectron2's shortest-edge rule, cv2's pixels."""

    def get_transform(self, image):
        t = super().get_transform(image)
        if isinstance(t, T.ResizeTransform):
            return CV2ResizeTransform(t.h, t.w, t.new_h, t.new_w, t.interp)
        return t


def resize_backend(cfg) -> str:
    backend = cfg.INPUT.get("RESIZE_BACKEND", "pillow")
    if backend not in RESIZE_BACKENDS:
        raise ValueError(f"INPUT.RESIZE_BACKEND must be one of {list(RESIZE_BACKENDS)}, got {backend!r}")
    return backend


def test_resize(cfg) -> T.ResizeShortestEdge:
    """The test-time resize of ``cfg`` (``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``) in its library."""
    cls = CV2ResizeShortestEdge if resize_backend(cfg) == "cv2" else T.ResizeShortestEdge
    return cls([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)


def test_mapper(cfg):
    """Detectron2's test ``DatasetMapper`` with :func:`test_resize` (the same as Detectron2's for "pillow")."""
    from detectron2.data import DatasetMapper

    if cfg.INPUT.MIN_SIZE_TEST == 0:  # Detectron2: no resize at all
        return DatasetMapper(cfg, is_train=False)
    return DatasetMapper(cfg, is_train=False, augmentations=[test_resize(cfg)])
