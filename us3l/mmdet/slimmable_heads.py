"""Slimmable FPN, RPN head, RoI extractor, box head and mask head: mmdet's own classes, layers swapped.

Each class builds mmdet's module, then :func:`us3l.detection.slimmify` swaps its layers for slimmable ones
that share the same parameters (names, ``init_cfg`` and forward logic stay mmdet's). All follow the
detector's ONE width: the FPN laterals take the backbone's active channels and, with ``slimmable=True``,
every following layer keeps ``active_channels(C, w)`` of its ``C`` channels; the predictors (RPN
objectness / deltas, box classes / deltas, mask logits) keep their outputs full. ``slimmable=False`` keeps
the neck's outputs and the heads at full width (only the backbone is slimmed; laterals still take the
active backbone channels, no zero padding).
"""
from __future__ import annotations

import logging

import torch.nn as nn
from mmdet.models.dense_heads import RPNHead
from mmdet.models.necks import FPN
from mmdet.models.roi_heads.bbox_heads import Shared2FCBBoxHead
from mmdet.models.roi_heads.mask_heads import FCNMaskHead
from mmdet.models.roi_heads.roi_extractors import SingleRoIExtractor
from mmdet.registry import MODELS
from mmengine.logging import MMLogger

from ..detection import slimmify
from ..ops import DEFAULT_WIDTH_RANGE

_LAYERS = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)


def _layer_names(module: nn.Module) -> set[str]:
    return {n for n, m in module.named_modules() if isinstance(m, _LAYERS)}


def _slimmify_initialised(module, **kwargs) -> None:
    """``slimmify`` after mmdet's own initialisation: mmengine's initialisers match layers by their class or
    direct base name (``layer='Conv2d'``), which a slimmable layer no longer has, so the weights are
    initialised first and the slimmable layers share them (``init_weights`` is not run a second time)."""
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)  # (mmengine logs every parameter of a module initialised on its own)
    try:
        module.init_weights()
    finally:
        logger.setLevel(level)
    slimmify(module, **kwargs)


def _no_norm(kwargs: dict, where: str) -> None:
    if kwargs.get("norm_cfg") is not None:
        raise ValueError(f"{where}: normalisation layers in RoI heads are not supported by the slimmable detector "
                         "(BN calibration runs the backbone and the neck on whole images; heads see sampled RoIs)")


@MODELS.register_module()
class SlimmableFPN(FPN):
    """``FPN`` whose laterals take the active backbone channels; ``slimmable`` also slims its outputs.

    A BN in the FPN (``norm_cfg``) becomes per-width BN either way: its statistics depend on the backbone width.
    """

    def __init__(self, *args, slimmable: bool = True, width_range=DEFAULT_WIDTH_RANGE, **kwargs):
        super().__init__(*args, **kwargs)
        self.slimmable = slimmable
        layers = _layer_names(self)
        backbone_inputs = {f"lateral_convs.{i}.conv" for i in range(len(self.lateral_convs))}
        if self.add_extra_convs == "on_input":  # the first extra conv reads the backbone's last map
            backbone_inputs.add(f"fpn_convs.{len(self.lateral_convs)}.conv")
        _slimmify_initialised(self, keep_in=() if slimmable else layers - backbone_inputs,
                              keep_out=() if slimmable else layers, width_range=width_range)


@MODELS.register_module()
class SlimmableRPNHead(RPNHead):
    """``RPNHead`` at the detector's width: objectness and deltas for every anchor at any width."""

    def __init__(self, *args, slimmable: bool = True, width_range=DEFAULT_WIDTH_RANGE, **kwargs):
        super().__init__(*args, **kwargs)
        self.slimmable = slimmable
        if slimmable:
            _slimmify_initialised(self, keep_out={"rpn_cls", "rpn_reg"}, width_range=width_range)


@MODELS.register_module()
class SlimmableSingleRoIExtractor(SingleRoIExtractor):
    """``SingleRoIExtractor`` returning as many channels as the features it pools (mmdet allocates its
    output with ``out_channels``, the full width)."""

    def forward(self, feats, rois, roi_scale_factor=None):
        full = self.out_channels
        self.out_channels = feats[0].shape[1]
        try:
            return super().forward(feats, rois, roi_scale_factor)
        finally:
            self.out_channels = full


@MODELS.register_module()
class SlimmableShared2FCBBoxHead(Shared2FCBBoxHead):
    """``Shared2FCBBoxHead``: fc1 reads the active ``c x 7 x 7`` channels (channel-major prefix), the hidden
    fcs follow the width, class scores and box deltas stay full."""

    def __init__(self, *args, slimmable: bool = True, width_range=DEFAULT_WIDTH_RANGE, **kwargs):
        _no_norm(kwargs, type(self).__name__)
        super().__init__(*args, **kwargs)
        self.slimmable = slimmable
        if slimmable:
            if self.with_avg_pool:
                raise ValueError(f"{type(self).__name__}: with_avg_pool=True is not supported")
            _slimmify_initialised(self, keep_out=_layer_names(self) & {"fc_cls", "fc_reg"},
                     flatten={"shared_fcs.0": self.roi_feat_area}, width_range=width_range)


@MODELS.register_module()
class SlimmableFCNMaskHead(FCNMaskHead):
    """``FCNMaskHead``: the convs and the upsampling deconv follow the width, mask logits stay per class."""

    def __init__(self, *args, slimmable: bool = True, width_range=DEFAULT_WIDTH_RANGE, **kwargs):
        _no_norm(kwargs, type(self).__name__)
        super().__init__(*args, **kwargs)
        self.slimmable = slimmable
        if slimmable:
            if self.upsample_method not in (None, "deconv", "nearest", "bilinear"):
                raise ValueError(f"{type(self).__name__}: upsample {self.upsample_method!r} is not supported")
            _slimmify_initialised(self, keep_out={"conv_logits"}, width_range=width_range)
