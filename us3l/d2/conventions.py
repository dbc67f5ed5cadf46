"""The input conventions a US3L backbone was pre-trained with, checked against a Detectron2 config.

A stock Detectron2 config (``Base-RCNN-FPN.yaml``) is written for MSRA's Caffe2 ResNets: BGR input, unit std,
the stride in the 1x1 conv. A US3L backbone saw RGB images normalised by torchvision-style statistics and has
its stride in the 3x3 conv; merged into a stock config it loads without a warning and quietly learns from inputs
it never saw. The check runs where the backbone is built (every trainer, predictor and tool builds it there),
when ``MODEL.WEIGHTS`` is a US3L or torchvision-layout backbone file, and names the keys to set.
"""
from __future__ import annotations

import os

from ..checkpoint import CheckpointError
from ..checkpoint.d2_format import META_KEY, read_pkl
from ..checkpoint.io import is_backbone_file, read_framework_checkpoint
from ..data.transforms import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD

# the pre-training normalisations (us3l.data.transforms), on Detectron2's 0..255 pixel scale, RGB order
PRETRAINING_NORMALISATIONS = {
    "ImageNet": ([255 * v for v in IMAGENET_MEAN], [255 * v for v in IMAGENET_STD]),
    "CIFAR": ([255 * v for v in CIFAR_MEAN], [255 * v for v in CIFAR_STD]),
}
MEAN_TOLERANCE = 1.0  # grey levels: rounding of the published constants, not a channel swap (20 levels)
STD_TOLERANCE = 0.02  # relative


def is_us3l_weights(path: str) -> bool:
    """``path`` is a converted US3L ``.pkl`` or a backbone file in our, the reference code's or torchvision's
    layout (read safely; unreadable or missing files are left to the checkpointer's own error)."""
    if not path or not os.path.isfile(path):
        return False
    try:
        if path.endswith(".pkl"):
            return META_KEY in read_pkl(path)
        return is_backbone_file(read_framework_checkpoint(path))
    except CheckpointError:
        return False


def _close(values, reference, tolerance, relative: bool) -> bool:
    values = [float(v) for v in values]
    if len(values) != len(reference):
        return False
    return all(abs(v - r) <= (tolerance * r if relative else tolerance) for v, r in zip(values, reference))


def convention_errors(cfg, *, stride_in_1x1: bool = True) -> list[str]:
    """What in ``cfg`` disagrees with the US3L pre-training (empty: nothing); ``stride_in_1x1``: check
    ``MODEL.RESNETS.STRIDE_IN_1X1`` (width-sized Detectron2 ResNets; the slimmable one has no such key)."""
    errors = []
    if cfg.INPUT.FORMAT != "RGB":
        errors.append(f"INPUT.FORMAT is {cfg.INPUT.FORMAT!r}: set INPUT.FORMAT RGB (US3L pre-training reads RGB "
                      "images; Detectron2's stock configs read BGR for MSRA's Caffe2 weights)")
    if not any(_close(cfg.MODEL.PIXEL_MEAN, mean, MEAN_TOLERANCE, False)
               and _close(cfg.MODEL.PIXEL_STD, std, STD_TOLERANCE, True)
               for mean, std in PRETRAINING_NORMALISATIONS.values()):
        mean, std = (", ".join(f"{v:g}" for v in x) for x in PRETRAINING_NORMALISATIONS["ImageNet"])
        errors.append(f"MODEL.PIXEL_MEAN {list(cfg.MODEL.PIXEL_MEAN)} / MODEL.PIXEL_STD {list(cfg.MODEL.PIXEL_STD)} "
                      f"are not a normalisation US3L pre-training uses: set MODEL.PIXEL_MEAN [{mean}] and "
                      f"MODEL.PIXEL_STD [{std}] (ImageNet statistics in RGB order; the CIFAR recipe's statistics "
                      "are accepted too)")
    if stride_in_1x1 and cfg.MODEL.RESNETS.STRIDE_IN_1X1 and cfg.MODEL.RESNETS.DEPTH >= 50:
        errors.append("MODEL.RESNETS.STRIDE_IN_1X1 is True: set MODEL.RESNETS.STRIDE_IN_1X1 False (US3L ResNets "
                      "put the stride in the 3x3 conv, as torchvision does; Detectron2's default is MSRA's 1x1)")
    return errors


def check_pretrained_conventions(cfg, *, stride_in_1x1: bool = True) -> None:
    """Raise ``ValueError`` when ``MODEL.WEIGHTS`` is a US3L backbone and ``cfg`` feeds it other inputs."""
    if not is_us3l_weights(cfg.MODEL.WEIGHTS):
        return
    errors = convention_errors(cfg, stride_in_1x1=stride_in_1x1)
    if errors:
        raise ValueError(f"MODEL.WEIGHTS {cfg.MODEL.WEIGHTS} is a US3L backbone, but the config does not feed it "
                         "what it was pre-trained on: " + "; ".join(errors))
