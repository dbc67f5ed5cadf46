"""The input conventions a US3L backbone was pre-trained with, checked against the detector it is loaded into.

A stock Detectron2 config (``Base-RCNN-FPN.yaml``) is written for MSRA's Caffe2 ResNets: BGR input, unit std,
the stride in the 1x1 conv. A US3L backbone saw RGB images normalised by torchvision-style statistics and has
its stride in the 3x3 conv; merged into a stock config it loads without a warning and quietly learns from inputs
it never saw. The check runs where a US3L file meets the model, in every Detectron2 loader (ours and Detectron2's
own, :mod:`us3l.d2.checkpoint`), on what the built model holds (``input_format``, ``pixel_mean`` / ``pixel_std``,
its bottleneck strides), and names the config keys to set.
"""
from __future__ import annotations

from detectron2.modeling.backbone.resnet import BottleneckBlock

from ..checkpoint import CheckpointError
from ..data.transforms import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD

# the pre-training normalisations (us3l.data.transforms), on Detectron2's 0..255 pixel scale, RGB order
PRETRAINING_NORMALISATIONS = {
    "ImageNet": ([255 * v for v in IMAGENET_MEAN], [255 * v for v in IMAGENET_STD]),
    "CIFAR": ([255 * v for v in CIFAR_MEAN], [255 * v for v in CIFAR_STD]),
}
MEAN_TOLERANCE = 1.0  # grey levels: rounding of the published constants, not a channel swap (20 levels)
STD_TOLERANCE = 0.02  # relative


def _close(values, reference, tolerance, relative: bool) -> bool:
    if len(values) != len(reference):
        return False
    return all(abs(v - r) <= (tolerance * r if relative else tolerance) for v, r in zip(values, reference))


def _stride_in_1x1(model) -> bool:
    """The first strided bottleneck of a width-sized Detectron2 ResNet has its stride in the 1x1 conv."""
    block = next((m for m in model.modules() if isinstance(m, BottleneckBlock) and m.stride > 1), None)
    return block is not None and block.conv1.stride != (1, 1)


def convention_errors(model) -> list[str]:
    """What in the built detector disagrees with the US3L pre-training (empty: nothing)."""
    net = getattr(model, "module", model)
    errors = []
    fmt = getattr(net, "input_format", None)
    if fmt is not None and fmt != "RGB":
        errors.append(f"INPUT.FORMAT is {fmt!r}: set INPUT.FORMAT RGB (US3L pre-training reads RGB images; "
                      "Detectron2's stock configs read BGR for MSRA's Caffe2 weights)")
    mean, std = getattr(net, "pixel_mean", None), getattr(net, "pixel_std", None)
    if mean is not None and std is not None:
        mean, std = [round(float(v), 3) for v in mean.flatten()], [round(float(v), 3) for v in std.flatten()]
        if not any(_close(mean, m, MEAN_TOLERANCE, False) and _close(std, s, STD_TOLERANCE, True)
                   for m, s in PRETRAINING_NORMALISATIONS.values()):
            m, s = (", ".join(f"{v:g}" for v in x) for x in PRETRAINING_NORMALISATIONS["ImageNet"])
            errors.append(f"MODEL.PIXEL_MEAN {mean} / MODEL.PIXEL_STD {std} are not a normalisation US3L "
                          f"pre-training uses: set MODEL.PIXEL_MEAN [{m}] and MODEL.PIXEL_STD [{s}] (ImageNet "
                          "statistics in RGB order; the CIFAR recipe's statistics are accepted too)")
    if _stride_in_1x1(net):
        errors.append("MODEL.RESNETS.STRIDE_IN_1X1 is True: set MODEL.RESNETS.STRIDE_IN_1X1 False (US3L ResNets "
                      "put the stride in the 3x3 conv, as torchvision does; Detectron2's default is MSRA's 1x1; it "
                      "silently costs AP otherwise)")
    return errors


def check_conventions(model, source: str) -> None:
    """Raise :class:`CheckpointError` when the US3L file ``source`` would be fed other inputs than it learned on."""
    errors = convention_errors(model)
    if errors:
        raise CheckpointError(f"{source} is a US3L backbone, but the config does not feed it what it was "
                              "pre-trained on: " + "; ".join(errors))
