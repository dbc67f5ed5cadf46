"""The universally slimmable backbone of a Detectron2 detector: ONE set of weights for every width.

Registered as backbone ``build_us3l_slimmable_resnet_fpn_backbone`` (select it in a config, see
``projects/*/configs/*slimmable*``; the heads: :mod:`.slimmable_heads`): the slimmable ResNet itself
(:func:`us3l.models.us_resnet`, torchvision parameter names under ``backbone.bottom_up.``) and Detectron2's own
``FPN``, whose convs :func:`us3l.detection.slimmify` makes slimmable; the lateral convs take the backbone's ACTIVE
channels (no zero padding). ``MODEL.US3L.SLIM_NECK_HEADS: False`` keeps the FPN (and the heads) at full width: only
the backbone slims, the FPN laterals still take the active backbone channels, and BN layers in the FPN keep per-width
statistics. The width is runtime state: ``us3l.set_width(model, w)``; the detector is built at
``MODEL.US3L.WIDTH_MULT``. BN statistics: :mod:`us3l.detection.calibration` (an uncalibrated width is refused).
Checkpoints: :mod:`.slimmable_checkpoint`; export to a plain detector: :mod:`.export`.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN, Backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool

from ..checkpoint.guard import refuse_incomplete_load
from ..checkpoint.keymaps import D2_FPN_TRUNK_PREFIX
from ..detection import slimmify
from ..models.resnet import ARCH_SETTINGS, us_resnet
from ..width import set_width
from .config import us3l_width

SLIMMABLE_BACKBONE = "build_us3l_slimmable_resnet_fpn_backbone"
TRUNK_PREFIX = D2_FPN_TRUNK_PREFIX
_STAGES = ("res2", "res3", "res4", "res5")


def is_slimmable_detector_cfg(cfg) -> bool:
    return cfg.MODEL.BACKBONE.NAME == SLIMMABLE_BACKBONE


def cfg_width_range(cfg) -> tuple[float, float]:
    lo, hi = (float(v) for v in cfg.MODEL.US3L.WIDTH_RANGE)
    return lo, hi


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
                                freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT, width_range=cfg_width_range(cfg),
                                slim=cfg.MODEL.US3L.SLIM_NECK_HEADS, width=us3l_width(cfg))
