"""ONE Faster / Mask R-CNN for every width, fine-tuned with the sandwich rule inside mmengine's own machinery.

Each training iteration runs :func:`us3l.detection.sandwich_step`: the max width, ``num_random`` random
widths and the min width, supervised losses at each, optional inplace distillation of the max width's RPN
objectness and box classification, one backward per width (gradients accumulate), then ONE optimizer step
through the ``OptimWrapper`` (so gradient clipping, ``AmpOptimWrapper``, accumulation, checkpointing and
resume are mmengine's). Under DDP the wrapper :class:`SandwichDistributedDataParallel` runs the same step,
all-reducing the summed gradients once. The width is runtime state (``us3l.set_width``); ``predict`` at a
width whose BN statistics are not calibrated is refused (:func:`us3l.detection.require_calibrated`).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses

import torch
from mmdet.models.detectors import FasterRCNN, MaskRCNN
from mmdet.registry import MODELS
from mmengine.logging import MessageHub
from mmengine.model.wrappers import MMDistributedDataParallel
from mmengine.registry import MODEL_WRAPPERS

from ..detection import (
    SandwichConfig,
    box_cls_distill_loss,
    objectness_distill_loss,
    require_calibrated,
    sample_widths,
    sandwich_step,
)
from ..ops import DEFAULT_WIDTH_RANGE
from ..width import get_width, set_width

# config path of each component -> its slimmable type
SLIMMABLE_PARTS = {("neck",): "SlimmableFPN", ("rpn_head",): "SlimmableRPNHead",
                   ("roi_head", "bbox_roi_extractor"): "SlimmableSingleRoIExtractor",
                   ("roi_head", "bbox_head"): "SlimmableShared2FCBBoxHead",
                   ("roi_head", "mask_roi_extractor"): "SlimmableSingleRoIExtractor",
                   ("roi_head", "mask_head"): "SlimmableFCNMaskHead"}
EXTRACTORS = ("bbox_roi_extractor", "mask_roi_extractor")


def _slimmable_components(parts: dict, width_range, slim_neck_and_heads: bool) -> dict:
    """Component configs with the detector's width range and switch, checked against the slimmable types."""
    parts = copy.deepcopy(parts)
    backbone = parts["backbone"]
    if backbone.get("type") != "US3LSlimmableResNet":
        raise ValueError("a slimmable detector needs model.backbone.type='US3LSlimmableResNet', "
                         f"got {backbone.get('type')!r}")
    backbone["width_range"] = tuple(width_range)
    for path, slim_type in SLIMMABLE_PARTS.items():
        node = parts
        for key in path:
            node = node.get(key) if node is not None else None
        if node is None:
            continue
        name = "model." + ".".join(path)
        if node.get("type") != slim_type:
            if slim_neck_and_heads or path == ("neck",):  # the neck always takes the active backbone channels
                raise ValueError(f"{name}.type must be {slim_type!r} in a slimmable detector, got {node.get('type')!r}")
            continue
        if path[-1] not in EXTRACTORS:
            node.update(slimmable=slim_neck_and_heads, width_range=tuple(width_range))
    return parts


class SlimmableTwoStageMixin:
    """The sandwich train step, inplace distillation and the calibrated-width check of a two-stage detector.

    ``width_range``: widths the detector runs at (backbone, neck and heads). ``slim_neck_and_heads=False``:
    only the backbone is slimmed. ``sandwich``: ``num_random`` (random widths per iteration), ``distill``
    (inplace distillation), ``distill_weight``, ``seed`` (None: the run's ``randomness.seed``).
    """

    def __init__(self, backbone, rpn_head, roi_head, train_cfg, test_cfg, neck=None, data_preprocessor=None,
                 init_cfg=None, width_range=DEFAULT_WIDTH_RANGE, slim_neck_and_heads: bool = True,
                 sandwich: dict | None = None):
        parts = _slimmable_components(dict(backbone=backbone, neck=neck, rpn_head=rpn_head, roi_head=roi_head),
                                      width_range, slim_neck_and_heads)
        if parts["neck"] is None:
            raise ValueError("a slimmable detector needs an FPN neck (model.neck.type='SlimmableFPN')")
        super().__init__(train_cfg=train_cfg, test_cfg=test_cfg, data_preprocessor=data_preprocessor,
                         init_cfg=init_cfg, **parts)
        self._check_neck_follows_backbone()
        self.slim_neck_and_heads = slim_neck_and_heads
        sandwich = dict(sandwich or {})
        self._seed_from_run = sandwich.get("seed") is None
        sandwich["seed"] = sandwich.get("seed") or 0
        self.sandwich = SandwichConfig(width_range=tuple(width_range), **sandwich)
        set_width(self, self.sandwich.width_range[1])
        self._step = 0          # iterations seen without a runner (the runner's iteration is used when there is one)
        self._teaching = None   # per-iteration state of inplace distillation (None outside a sandwich step)

    def _check_neck_follows_backbone(self) -> None:
        """At build time, not in the first forward ("USConv2d ... expects 256 input channels, got 64"): the
        slimmable FPN is built with the backbone's FULL-width channels, so they must be the backbone's."""
        given = getattr(self.backbone, "out_channels", None)
        wanted = list(getattr(self.neck, "in_channels", []) or [])
        if given is not None and wanted and list(given) != wanted:
            raise ValueError(f"model.neck.in_channels={wanted} but the backbone (depth "
                             f"{getattr(self.backbone, 'depth', '?')}) gives {list(given)} at full width: set "
                             f"model.neck.in_channels={list(given)} (a slimmable FPN takes the full-width channels; "
                             "the width is set at run time)")

    # ------------------------------------------------------------------------------------------ training
    def train_step(self, data, optim_wrapper):
        return sandwich_train_step(self, self, data, optim_wrapper)

    def train_widths(self) -> list[float]:
        """This iteration's widths: a pure function of (seed, iteration), identical on every rank and on resume
        (mmengine restores the iteration and the run's seed from the checkpoint's message hub)."""
        hub = MessageHub.get_current_instance()
        iteration = hub.get_info("iter")
        if iteration is None:  # no runner
            iteration, self._step = self._step, self._step + 1
        config = self.sandwich
        if self._seed_from_run and isinstance(hub.get_info("seed"), int):  # the run's randomness.seed
            config = dataclasses.replace(config, seed=hub.get_info("seed"))
        return sample_widths(config, iteration)

    def loss(self, batch_inputs, batch_data_samples):
        teaching = self._teaching
        if teaching is None and self.training:
            raise RuntimeError(f"{type(self).__name__}.loss was called outside its sandwich train_step, which would "
                               "train one width only; under DDP set "
                               "model_wrapper_cfg=dict(type='SandwichDistributedDataParallel')")
        if teaching is None or not self.sandwich.distill:
            return super().loss(batch_inputs, batch_data_samples)
        with self._recording() as seen:
            losses = super().loss(batch_inputs, batch_data_samples)
        if teaching.get("teacher") is None:  # the max width: its outputs teach the smaller widths
            teaching["teacher"] = {"rpn_cls": [t.detach() for t in seen["rpn_cls"]], "rois": seen["rois"].detach(),
                                   "cls_score": seen["cls_score"].detach()}
            return losses
        teacher, weight = teaching["teacher"], self.sandwich.distill_weight
        student_cls = self.roi_head._bbox_forward(seen["feats"], teacher["rois"])["cls_score"]
        losses["loss_distill_rpn"] = weight * objectness_distill_loss(seen["rpn_cls"], teacher["rpn_cls"])
        losses["loss_distill_cls"] = weight * box_cls_distill_loss(student_cls, teacher["cls_score"])
        return losses

    @contextlib.contextmanager
    def _recording(self):
        """Collects what distillation needs from one forward: FPN features, objectness, sampled RoIs, class scores."""
        seen = {}

        def keep(key, pick):
            def hook(module, inputs, output):  # returns None: the forward's output is left unchanged
                seen.setdefault(key, pick(inputs, output))
            return hook

        hooks = [self.neck.register_forward_hook(keep("feats", lambda i, o: o)),
                 self.rpn_head.register_forward_hook(keep("rpn_cls", lambda i, o: o[0])),
                 self.roi_head.bbox_roi_extractor.register_forward_hook(keep("rois", lambda i, o: i[1])),
                 self.roi_head.bbox_head.register_forward_hook(keep("cls_score", lambda i, o: o[0]))]
        try:
            yield seen
        finally:
            for h in hooks:
                h.remove()

    # ---------------------------------------------------------------------------------------- inference
    def predict(self, batch_inputs, batch_data_samples, rescale: bool = True):
        require_calibrated(self, get_width(self))
        return super().predict(batch_inputs, batch_data_samples, rescale=rescale)


def sandwich_train_step(detector, caller, data, optim_wrapper) -> dict:
    """One sandwich iteration of ``detector`` (``caller``: the detector or its DDP wrapper) with mmengine's
    ``OptimWrapper``: per-width backward through ``optim_wrapper.backward`` (AMP loss scaling), one step."""
    widths = detector.train_widths()
    with optim_wrapper.optim_context(caller):
        data = detector.data_preprocessor(data, True)
    first_count = optim_wrapper._inner_count

    def loss_at_width(width, index):
        with optim_wrapper.optim_context(caller):
            losses = caller._run_forward(data, mode="loss")
        return {k: (v.mean() if isinstance(v, torch.Tensor) else sum(x.mean() for x in v))
                for k, v in losses.items() if "loss" in k}

    def backward(loss):
        # mmengine counts backward passes as iterations (gradient accumulation); all widths are one iteration
        optim_wrapper._inner_count = first_count
        optim_wrapper.backward(optim_wrapper.scale_loss(loss))

    detector._teaching = {}
    try:
        logged = sandwich_step(caller, widths, loss_at_width, backward, slimmable=detector)
    finally:
        detector._teaching = None
    if optim_wrapper.should_update():
        optim_wrapper.step()
        optim_wrapper.zero_grad()
    log_vars = {"loss": sum(logged.values())}
    for key, value in logged.items():  # max width's losses by name, the others' totals by slot, distillation apart
        name, slot = key.rsplit("/", 1)
        target = name if slot == "max" or name.startswith("loss_distill") else f"loss_{slot}"
        log_vars[target] = log_vars.get(target, 0) + value
    return log_vars


@MODELS.register_module()
class SlimmableFasterRCNN(SlimmableTwoStageMixin, FasterRCNN):
    """Universally slimmable Faster R-CNN (US-ResNet + FPN + RPN + box head at one runtime width)."""


@MODELS.register_module()
class SlimmableMaskRCNN(SlimmableTwoStageMixin, MaskRCNN):
    """Universally slimmable Mask R-CNN (US-ResNet + FPN + RPN + box and mask heads at one runtime width)."""


@MODEL_WRAPPERS.register_module()
class SandwichDistributedDataParallel(MMDistributedDataParallel):
    """``MMDistributedDataParallel`` whose ``train_step`` is the sandwich step (plain DDP trains one width).

    Configs of slimmable detectors set ``model_wrapper_cfg = dict(type='SandwichDistributedDataParallel')``.
    """

    def train_step(self, data, optim_wrapper):
        if not isinstance(self.module, SlimmableTwoStageMixin):
            raise TypeError("SandwichDistributedDataParallel wraps slimmable detectors, "
                            f"got {type(self.module).__name__}")
        return sandwich_train_step(self.module, self, data, optim_wrapper)
