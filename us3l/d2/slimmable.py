"""A universally slimmable Detectron2 detector: ONE set of weights for every width, the whole detector slimmed.

Registered components (select them in a config, see ``projects/*/configs/*slimmable*``):

* backbone ``build_us3l_slimmable_resnet_fpn_backbone``: the slimmable ResNet itself
  (:func:`us3l.models.us_resnet`, torchvision parameter names under ``backbone.bottom_up.``) and Detectron2's
  own ``FPN``, whose convs :func:`us3l.detection.slimmify` makes slimmable; the lateral convs take the
  backbone's ACTIVE channels (no zero padding);
* RPN head ``US3LSlimmableRPNHead``: Detectron2's ``StandardRPNHead``, hidden conv slimmed, anchor outputs full;
* ROI heads ``US3LSlimmableROIHeads``: Detectron2's ``StandardROIHeads`` whose box head
  (``FastRCNNConvFCHead``: convs, fcs; fc1 sliced channel-major after the flatten), box predictor (input
  sliced, class/box outputs full) and mask head (``MaskRCNNConvUpsampleHead``: convs, deconv, predictor input)
  are slimmed.

``MODEL.US3L.SLIM_NECK_HEADS: False`` keeps FPN, RPN and ROI heads at full width (only the backbone slims;
the FPN laterals still take the active backbone channels, and BN layers in the FPN keep per-width
statistics). The width is runtime state: ``us3l.set_width(model, w)``; the detector is built at
``MODEL.US3L.WIDTH_MULT``. BN statistics: see :mod:`us3l.detection.calibration` (an uncalibrated width is
refused). Export to a plain Detectron2 detector: :func:`export_plain_detector`.
"""
from __future__ import annotations

import logging
import re

import torch
import torch.nn as nn
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, ROI_HEADS_REGISTRY, RPN_HEAD_REGISTRY
from detectron2.modeling.backbone import FPN, Backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.modeling.proposal_generator.rpn import StandardRPNHead
from detectron2.modeling.roi_heads import StandardROIHeads
from detectron2.modeling.roi_heads.box_head import FastRCNNConvFCHead
from detectron2.modeling.roi_heads.mask_head import MaskRCNNConvUpsampleHead

from ..checkpoint import CheckpointError, LoadReport
from ..checkpoint.d2_format import META_KEY
from ..checkpoint.guard import refuse_incomplete_load
from ..checkpoint.keymaps import D2_FPN_TRUNK_PREFIX, d2_to_tv, tv_to_d2
from ..detection import neck_head_channels, require_calibrated, slimmify
from ..models.resnet import ARCH_SETTINGS, us_resnet
from ..ops import USBatchNorm2d
from ..ops.norm import WIDTH_STATS_RE
from ..width import set_width, slimmable_modules
from .checkpoint import US3LCheckpointer
from .config import us3l_width

logger = logging.getLogger("detectron2.us3l.slimmable")

SLIMMABLE_BACKBONE = "build_us3l_slimmable_resnet_fpn_backbone"
TRUNK_PREFIX = D2_FPN_TRUNK_PREFIX
_STAGES = ("res2", "res3", "res4", "res5")


def is_slimmable_detector_cfg(cfg) -> bool:
    return cfg.MODEL.BACKBONE.NAME == SLIMMABLE_BACKBONE


def _width_range(cfg) -> tuple[float, float]:
    lo, hi = (float(v) for v in cfg.MODEL.US3L.WIDTH_RANGE)
    return lo, hi


# ---------------------------------------------------------------------------------------------- backbone
class US3LSlimmableResNet(Backbone):
    """The slimmable US-ResNet as a Detectron2 ``Backbone`` (outputs ``res2..res5``; torchvision names).

    ``output_shape()`` reports FULL channels (the FPN is built at full size and slimmed afterwards); at width
    ``w`` stage ``i`` emits ``us3l.active_channels(full_i, w)`` channels.
    """

    def __init__(self, depth: int, out_features, width_range=(0.25, 1.0), freeze_at: int = 0):
        super().__init__()
        if depth not in ARCH_SETTINGS:
            raise ValueError(f"MODEL.RESNETS.DEPTH={depth}: slimmable ResNets exist for depths {sorted(ARCH_SETTINGS)}")
        bad = [f for f in out_features if f not in _STAGES]
        if bad:
            raise ValueError(f"MODEL.RESNETS.OUT_FEATURES: unknown {bad}; choose from {list(_STAGES)}")
        net = us_resnet(depth, num_classes=0, width_range=width_range)
        num_stages = max(_STAGES.index(f) for f in out_features) + 1
        for name in ("conv1", "bn1", "relu", "maxpool"):
            self.add_module(name, getattr(net, name))
        for i in range(1, num_stages + 1):
            self.add_module(f"layer{i}", getattr(net, f"layer{i}"))
        self.us3l_depth, self.num_stages = depth, num_stages
        expansion = 4 if ARCH_SETTINGS[depth][0] == "bottleneck" else 1
        self._out_features = list(out_features)
        self._out_feature_channels = {f"res{i + 2}": 64 * 2 ** i * expansion for i in range(4)}
        self._out_feature_strides = {f"res{i + 2}": 4 * 2 ** i for i in range(4)}
        self._freeze(freeze_at)

    def _freeze(self, freeze_at: int) -> None:
        """``MODEL.BACKBONE.FREEZE_AT``: no gradients for the stem (1) and the first stages (2..5).

        BN layers still normalize with batch statistics while training (slimmable BN has no frozen form).
        """
        parts = [[self.conv1, self.bn1]] + [[getattr(self, f"layer{i}")] for i in range(1, self.num_stages + 1)]
        for group in parts[:freeze_at]:
            for module in group:
                module.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = {}
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{i}")(x)
            name = f"res{i + 1}"
            if name in self._out_features:
                out[name] = x
        return out

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        refuse_incomplete_load(self, state_dict, prefix, fix=(
            "Load US3L files into a slimmable detector with us3l.d2.SlimmableDetectorCheckpointer (its trainer, "
            "us3l.d2.sandwich.trainer_class(cfg), and us3l-train-net use it); a US3L .pkl names the tensors the "
            "Detectron2 way, which Detectron2's own loader does not map onto this backbone's torchvision names"))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _check_slimmable_cfg(cfg) -> None:
    r = cfg.MODEL.RESNETS
    problems = []
    if r.NORM not in ("BN", "SyncBN"):
        problems.append(f"MODEL.RESNETS.NORM={r.NORM!r} (the slimmable ResNet uses per-width BN: set BN or SyncBN)")
    if r.STRIDE_IN_1X1:
        problems.append("MODEL.RESNETS.STRIDE_IN_1X1=True (US3L ResNets put the stride in the 3x3 conv)")
    if r.NUM_GROUPS != 1 or r.WIDTH_PER_GROUP != 64 or r.STEM_OUT_CHANNELS != 64:
        problems.append("MODEL.RESNETS NUM_GROUPS/WIDTH_PER_GROUP/STEM_OUT_CHANNELS must be 1/64/64")
    kind = ARCH_SETTINGS.get(r.DEPTH, ("?",))[0]
    expected = 256 if kind == "bottleneck" else 64
    if r.RES2_OUT_CHANNELS != expected:
        problems.append(f"MODEL.RESNETS.RES2_OUT_CHANNELS must be {expected} for ResNet-{r.DEPTH}")
    if r.RES5_DILATION != 1 or any(r.DEFORM_ON_PER_STAGE):
        problems.append("dilated / deformable res5 is not supported by the slimmable backbone")
    for head, norm in (("ROI_BOX_HEAD", cfg.MODEL.ROI_BOX_HEAD.NORM), ("ROI_MASK_HEAD", cfg.MODEL.ROI_MASK_HEAD.NORM)):
        if norm:
            problems.append(f"MODEL.{head}.NORM={norm!r}: heads of a slimmable detector take no norm (BN in a head "
                            "sees only sampled regions and cannot be calibrated from images)")
    if cfg.MODEL.FPN.NORM not in ("", "BN", "SyncBN"):
        problems.append(f"MODEL.FPN.NORM={cfg.MODEL.FPN.NORM!r}: use '', BN or SyncBN in a slimmable FPN")
    if problems:
        raise ValueError("slimmable detector config: " + "; ".join(problems))


def slimmify_fpn(fpn: FPN, slim: bool, width_range) -> list[str]:
    """Make ``fpn``'s convs slimmable: laterals always take the active backbone channels.

    With ``slim=False`` every FPN output stays full (``keep_out``), but any BN still gets per-width statistics.
    """
    names = [n for n, m in fpn.named_children() if n.startswith(("fpn_lateral", "fpn_output"))]
    keep_out = [] if slim else names
    keep_in = [] if slim else [n for n in names if n.startswith("fpn_output")]
    converted = []
    for n in names:
        holder = nn.Module()
        holder.add_module("layer", getattr(fpn, n))
        converted += [f"{n}{c[len('layer'):]}" for c in slimmify(
            holder, keep_in=["layer"] if n in keep_in else [], keep_out=["layer"] if n in keep_out else [],
            width_range=width_range)]
        new = holder.layer
        old = getattr(fpn, n)
        setattr(fpn, n, new)
        fpn.lateral_convs = [new if m is old else m for m in fpn.lateral_convs]
        fpn.output_convs = [new if m is old else m for m in fpn.output_convs]
    return converted


def slimmable_resnet_fpn(*, depth: int = 50, out_features=("res2", "res3", "res4", "res5"), in_features=None,
                         out_channels: int = 256, norm: str = "", fuse_type: str = "sum", freeze_at: int = 0,
                         width_range=(0.25, 1.0), slim: bool = True, width: float = 1.0) -> FPN:
    """Slimmable US-ResNet + Detectron2 FPN from explicit arguments (LazyConfig: ``L(slimmable_resnet_fpn)(...)``);
    ``slim``: the FPN slims with the width (``MODEL.US3L.SLIM_NECK_HEADS``); built and set at ``width``."""
    width_range = tuple(float(v) for v in width_range)
    bottom_up = US3LSlimmableResNet(depth, list(out_features), width_range, freeze_at)
    fpn = FPN(bottom_up=bottom_up, in_features=list(in_features or out_features), out_channels=out_channels,
              norm=norm, top_block=LastLevelMaxPool(), fuse_type=fuse_type)
    slimmify_fpn(fpn, slim, width_range)
    set_width(fpn, width)
    return fpn


@BACKBONE_REGISTRY.register()
def build_us3l_slimmable_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """Slimmable US-ResNet + Detectron2 FPN (slimmed unless ``MODEL.US3L.SLIM_NECK_HEADS`` is False)."""
    _check_slimmable_cfg(cfg)
    if input_shape.channels != 3:
        raise ValueError(f"the slimmable ResNet takes RGB input, got {input_shape.channels} channels")
    return slimmable_resnet_fpn(depth=cfg.MODEL.RESNETS.DEPTH, out_features=cfg.MODEL.RESNETS.OUT_FEATURES,
                                in_features=cfg.MODEL.FPN.IN_FEATURES, out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
                                norm=cfg.MODEL.FPN.NORM, fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
                                freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT, width_range=_width_range(cfg),
                                slim=cfg.MODEL.US3L.SLIM_NECK_HEADS, width=us3l_width(cfg))


# ------------------------------------------------------------------------------------------------- heads
@RPN_HEAD_REGISTRY.register()
class US3LSlimmableRPNHead(StandardRPNHead):
    """``StandardRPNHead`` whose hidden conv(s) slim with the width; objectness / deltas stay full (per anchor)."""

    @configurable
    def __init__(self, *, slim: bool = True, width_range=(0.25, 1.0), width: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        if slim:
            slimmify(self, keep_out=["objectness_logits", "anchor_deltas"], width_range=width_range)
            set_width(self, width)  # built at the backbone's width, so the detector runs as built

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret.update(slim=cfg.MODEL.US3L.SLIM_NECK_HEADS, width_range=_width_range(cfg), width=us3l_width(cfg))
        return ret


@ROI_HEADS_REGISTRY.register()
class US3LSlimmableROIHeads(StandardROIHeads):
    """``StandardROIHeads`` whose box head, box predictor (input only) and mask head slim with the width.

    Built from a config (``MODEL.US3L.SLIM_NECK_HEADS``) or, as Detectron2's LazyConfig does, from explicit
    heads plus ``slim`` / ``width_range`` / ``width``; either way the heads are slimmed here, once.
    """

    @configurable
    def __init__(self, *, slim: bool = True, width_range=(0.25, 1.0), width: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        if not slim:
            return
        width_range = tuple(float(v) for v in width_range)
        head, predictor = self.box_head, self.box_predictor
        if type(head) is not FastRCNNConvFCHead:
            raise ValueError(f"slimmable ROI heads support the box head FastRCNNConvFCHead, got {type(head).__name__}")
        res = self.box_pooler.output_size
        area = res[0] * res[1] if isinstance(res, (tuple, list)) else res * res
        slimmify(head, flatten={"fc1": area} if head.fcs else {}, width_range=width_range)
        spatial = 1 if head.fcs else area  # a head without fcs hands the predictor a C*H*W flatten
        slimmify(predictor, keep_out=["cls_score", "bbox_pred"],
                 flatten={"cls_score": spatial, "bbox_pred": spatial} if spatial > 1 else {}, width_range=width_range)
        parts = [head, predictor]
        if self.mask_on:
            if type(self.mask_head) is not MaskRCNNConvUpsampleHead:
                raise ValueError("slimmable ROI heads support the mask head MaskRCNNConvUpsampleHead, got "
                                 f"{type(self.mask_head).__name__}")
            slimmify(self.mask_head, keep_out=["predictor"], width_range=width_range)
            parts.append(self.mask_head)
        for module in parts:
            set_width(module, width)

    @classmethod
    def from_config(cls, cfg, input_shape):
        if cfg.MODEL.KEYPOINT_ON:
            raise ValueError("slimmable ROI heads do not support keypoint heads")
        ret = super().from_config(cfg, input_shape)
        ret.update(slim=cfg.MODEL.US3L.SLIM_NECK_HEADS, width_range=_width_range(cfg), width=us3l_width(cfg))
        return ret


def unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def prepare_for_width(model: nn.Module, width: float) -> float:
    """Set the whole detector to ``width`` for evaluation; refuses a width without BN statistics."""
    net = unwrap(model)
    w = set_width(net, width)
    require_calibrated(net, w)
    return w


# -------------------------------------------------------------------------------------------- checkpoint
class SlimmableDetectorCheckpointer(US3LCheckpointer):
    """Loads a US3L backbone ``.pkl`` or a slimmable detector checkpoint, and nothing that does not fit.

    * US3L ``.pkl`` (ONE full-width backbone): placed on ``backbone.bottom_up.*`` (torchvision names), every
      trunk tensor full size, checked; its BN statistics are NOT taken: they belong to the pre-trained
      weights and are stale once fine-tuning starts (statistics come from calibration after training).
    * A slimmable detector checkpoint (``model_final.pth``, a resume): every key must fit exactly; the
      per-width BN statistics it stores (``running_mean_w0500``...) are loaded as such.
    * Anything else (a width-sized or stock detector, a Caffe2 model-zoo file) is refused.
    """

    def _load_model(self, checkpoint):
        model_state = self.model.state_dict()
        if checkpoint.get(META_KEY) is not None:
            checkpoint["model"] = self._place_slimmable_trunk(checkpoint["model"], checkpoint[META_KEY], model_state)
        else:
            if checkpoint.get("matching_heuristics", False):
                raise CheckpointError("a slimmable detector starts from a US3L backbone .pkl "
                                      "(tools/convert_pretrain_to_d2.py) or from a slimmable detector checkpoint; "
                                      "this file needs Detectron2's name-matching heuristics (a model-zoo file?)")
            state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in checkpoint["model"].items()}
            self._check_slimmable_exact(state, model_state)
            checkpoint["model"] = state
        checkpoint["matching_heuristics"] = False
        return DetectionCheckpointer._load_model(self, checkpoint)

    def _bn_prefixes(self) -> set[str]:
        return {f"{n}." for n, m in self.model.named_modules() if isinstance(m, USBatchNorm2d)}

    def _check_slimmable_exact(self, state, model_state) -> None:
        full = any(k.startswith(("proposal_generator.", "roi_heads.")) for k in state)
        scope = [k for k in model_state if k not in ("pixel_mean", "pixel_std") and not _is_width_stat(k)
                 and (full or k.startswith(TRUNK_PREFIX))]
        bn_prefixes = self._bn_prefixes()
        report = LoadReport()
        for k in scope:
            if k not in state:
                report.missing.append(k)
            elif tuple(state[k].shape) != tuple(model_state[k].shape):
                report.mismatched.append(f"{k}: checkpoint {tuple(state[k].shape)} vs model "
                                         f"{tuple(model_state[k].shape)} (a width-sized detector? export makes those; "
                                         "a slimmable detector loads full-width tensors only)")
            else:
                report.loaded.append(k)
        for k in state:
            if _is_width_stat(k):
                if k.rsplit(".", 1)[0] + "." not in bn_prefixes:
                    report.unexpected.append(k)
            elif k not in model_state and "anchor_generator.cell_anchors" not in k:
                report.unexpected.append(k)
        self._report(report, "a slimmable Detectron2 detector checkpoint" if full else "slimmable backbone weights")

    def _slimmable_body_for(self, meta) -> US3LSlimmableResNet:
        """The model's slimmable trunk, checked against the backbone file's architecture and width range."""
        body = next((m for m in self.model.modules() if isinstance(m, US3LSlimmableResNet)), None)
        if body is None:
            raise CheckpointError(f"the model has no slimmable backbone: set MODEL.BACKBONE.NAME {SLIMMABLE_BACKBONE}")
        if not isinstance(meta, dict) or meta.get("arch") != f"resnet{body.us3l_depth}":
            raise CheckpointError(f"the checkpoint is a {meta.get('arch') if isinstance(meta, dict) else meta!r} "
                                  f"backbone but the model is resnet{body.us3l_depth} (MODEL.RESNETS.DEPTH)")
        lo, hi = (float(v) for v in meta.get("width_range", (0.25, 1.0)))
        mlo, mhi = slimmable_modules(body)[0].width_range
        if mlo < lo - 1e-9 or mhi > hi + 1e-9:
            raise CheckpointError(f"MODEL.US3L.WIDTH_RANGE [{mlo}, {mhi}] exceeds the range [{lo}, {hi}] this "
                                  "backbone was pre-trained for")
        return body

    def _place_slimmable_trunk(self, state, meta, model_state) -> dict[str, torch.Tensor]:
        body = self._slimmable_body_for(meta)
        placed, report = {}, LoadReport()
        for k, v in state.items():
            tv = d2_to_tv(k)
            if tv is None:
                report.unexpected.append(k)
                continue
            name = TRUNK_PREFIX + tv
            if _is_width_stat(name) or re.search(r"(running_mean|running_var|num_batches_tracked)$", name):
                continue  # statistics of the pre-trained weights: never carried into fine-tuning
            if name not in model_state:
                if tv.startswith(tuple(f"layer{i}." for i in range(body.num_stages + 1, 5))):
                    continue  # a stage the config does not build (OUT_FEATURES stop earlier)
                report.unexpected.append(k)
                continue
            t = torch.as_tensor(v)
            if tuple(t.shape) != tuple(model_state[name].shape):
                report.mismatched.append(f"{k}: checkpoint {tuple(t.shape)} vs model {tuple(model_state[name].shape)}")
                continue
            placed[name] = t
            report.loaded.append(name)
        for k in model_state:
            if k.startswith(TRUNK_PREFIX) and k not in placed:
                if re.search(r"(running_mean|running_var|num_batches_tracked)$", k):
                    placed[k] = model_state[k]  # the model's reset statistics
                else:
                    report.missing.append(k)
        self._report(report, f"the US3L resnet{body.us3l_depth} backbone ({meta.get('source') or 'pkl'}) into the "
                             "slimmable detector (full width, BN statistics reset)")
        return placed


def _is_width_stat(key: str) -> bool:
    return bool(WIDTH_STATS_RE.match(key.rsplit(".", 1)[-1]))


# ------------------------------------------------------------------------------------------------ export
def export_channels(cfg, width: float) -> dict[str, int]:
    """Detectron2 config values of the neck/head channel counts at ``width`` (the rule of ``us3l.detection``)."""
    full = {"MODEL.FPN.OUT_CHANNELS": cfg.MODEL.FPN.OUT_CHANNELS,
            "MODEL.ROI_BOX_HEAD.FC_DIM": cfg.MODEL.ROI_BOX_HEAD.FC_DIM,
            "MODEL.ROI_BOX_HEAD.CONV_DIM": cfg.MODEL.ROI_BOX_HEAD.CONV_DIM,
            "MODEL.ROI_MASK_HEAD.CONV_DIM": cfg.MODEL.ROI_MASK_HEAD.CONV_DIM}
    out = neck_head_channels(full, width, cfg.MODEL.US3L.SLIM_NECK_HEADS)
    rpn = list(cfg.MODEL.RPN.CONV_DIMS)
    if any(d != -1 for d in rpn):
        scaled = neck_head_channels({str(i): d for i, d in enumerate(rpn) if d != -1}, width,
                                    cfg.MODEL.US3L.SLIM_NECK_HEADS)
        out["MODEL.RPN.CONV_DIMS"] = [d if d == -1 else scaled[str(i)] for i, d in enumerate(rpn)]
    return out


def plain_detector_cfg(cfg, width: float):
    """The config of a PLAIN Detectron2 detector equal to the slimmable ``cfg`` at ``width``.

    Plain registered components only: the width-sized ``build_us3l_resnet_fpn_backbone`` (Detectron2's own
    ResNet at ``MODEL.US3L.WIDTH_MULT``), Detectron2's FPN, ``StandardRPNHead``, ``StandardROIHeads`` with their
    channel counts written in. BN keeps the calibrated statistics of ``width`` (``RESNETS.NORM BN``).
    """
    from .config import us3l_width as _check

    out = cfg.clone()
    out.defrost()
    out.MODEL.BACKBONE.NAME = "build_us3l_resnet_fpn_backbone"
    out.MODEL.RESNETS.NORM = "BN"
    if out.MODEL.FPN.NORM == "SyncBN":
        out.MODEL.FPN.NORM = "BN"
    out.MODEL.RPN.HEAD_NAME = "StandardRPNHead"
    out.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    out.MODEL.US3L.WIDTH_MULT = float(width)
    out.MODEL.US3L.SANDWICH.ENABLED = False
    for key, value in export_channels(cfg, width).items():
        node = out
        *path, leaf = key.split(".")
        for p in path:
            node = node[p]
        node[leaf] = value
    out.MODEL.WEIGHTS = ""
    _check(out)
    return out


def plain_state_dict(model: nn.Module, width: float, plain_model: nn.Module) -> dict[str, torch.Tensor]:
    """The slimmable detector's tensors at ``width``, renamed and prefix-sliced to ``plain_model``'s shapes."""
    from ..checkpoint import select_width_stats, slice_to_shapes

    net = unwrap(model)
    require_calibrated(net, width)
    state = select_width_stats(net.state_dict(), width, "calibrated")
    renamed = {}
    for k, v in state.items():
        if k.startswith(TRUNK_PREFIX):
            d2 = tv_to_d2(k[len(TRUNK_PREFIX):])
            if d2 is None:
                raise CheckpointError(f"export: {k} is not a ResNet trunk tensor")
            k = TRUNK_PREFIX + d2
        renamed[k] = v
    shapes = {k: v.shape for k, v in plain_model.state_dict().items()}
    sliced, report = slice_to_shapes(renamed, shapes)
    report.raise_if_bad(f"exporting the slimmable detector at width {width}")
    return sliced


def export_plain_detector(model: nn.Module, cfg, width: float):
    """``(plain_model, plain_cfg)``: a plain Detectron2 detector with the slimmable one's outputs at ``width``."""
    from detectron2.modeling import build_model

    pcfg = plain_detector_cfg(cfg, width)
    pcfg.MODEL.DEVICE = "cpu"
    plain = build_model(pcfg)
    plain.load_state_dict(plain_state_dict(model, width, plain), strict=True)
    return plain.eval(), pcfg
