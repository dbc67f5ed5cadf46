"""Detectron2 ResNet / ResNet-FPN backbones physically sized for one US3L width.

A detector is fine-tuned at ONE width, so the backbone is Detectron2's own ``ResNet`` built from its own
blocks with every channel count ``us3l.active_channels(full, width)``: norm layers (BN, SyncBN, FrozenBN,
GN), ``FREEZE_AT`` and ``STRIDE_IN_1X1`` then behave exactly as in Detectron2, and the parameter names are
Detectron2's. The full-width pretrained tensors are prefix-sliced to these shapes by
:class:`us3l.d2.checkpoint.US3LCheckpointer`.
"""
from __future__ import annotations

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN, ResNet
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, BottleneckBlock

from ..checkpoint.guard import refuse_incomplete_load
from ..models.resnet import ARCH_SETTINGS
from ..ops import active_channels
from .config import us3l_width

# what a stock DetectionCheckpointer / DefaultTrainer user is told when a load would skip tensors
LOADER_FIX = ("Load US3L files with us3l.d2.US3LCheckpointer: train with us3l.d2.US3LTrainer (Detectron2's "
              "DefaultTrainer with that checkpointer) or us3l-train-net, or set trainer.checkpointer = "
              "us3l.d2.US3LCheckpointer(trainer.model, cfg.OUTPUT_DIR, cfg=cfg) before trainer.resume_or_load(); "
              "for inference, us3l.d2.US3LCheckpointer(model, cfg=cfg).load(path)")

GN_GROUPS = 32  # Detectron2's "GN" is GroupNorm(32, C)


class US3LResNet(ResNet):
    """Detectron2's ``ResNet`` at one width; records depth and width so the loader can check checkpoints."""

    def __init__(self, stem, stages, *, depth: int, width: float, out_features=None, freeze_at: int = 0):
        super().__init__(stem, stages, out_features=out_features, freeze_at=freeze_at)
        self.us3l_depth = depth
        self.us3l_width = width

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        refuse_incomplete_load(self, state_dict, prefix, fix=LOADER_FIX)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _check_resnet_cfg(cfg) -> tuple[str, tuple[int, ...]]:
    r = cfg.MODEL.RESNETS
    if r.DEPTH not in ARCH_SETTINGS:
        raise ValueError(f"MODEL.RESNETS.DEPTH={r.DEPTH}: US3L backbones exist for depths {sorted(ARCH_SETTINGS)}")
    if r.NUM_GROUPS != 1:
        raise ValueError("MODEL.RESNETS.NUM_GROUPS must be 1: US3L ResNets are not ResNeXt")
    if any(r.DEFORM_ON_PER_STAGE):
        raise ValueError("MODEL.RESNETS.DEFORM_ON_PER_STAGE: deformable convolutions are not supported "
                         "(and this Detectron2 build has no C++ ops)")
    kind, blocks = ARCH_SETTINGS[r.DEPTH]
    if kind == "basic" and r.RES2_OUT_CHANNELS != 64:
        raise ValueError(f"MODEL.RESNETS.RES2_OUT_CHANNELS must be 64 for ResNet-{r.DEPTH}")
    return kind, blocks


def _norm(cfg, channels: list[int], width: float):
    """``MODEL.RESNETS.NORM``, refusing GN where a width's channel counts are not divisible by 32."""
    norm = cfg.MODEL.RESNETS.NORM
    if norm == "GN":
        bad = sorted({c for c in channels if c % GN_GROUPS})
        if bad:
            raise ValueError(
                f"MODEL.RESNETS.NORM=GN uses GroupNorm({GN_GROUPS}, C), but width {width} gives channel counts "
                f"{bad} not divisible by {GN_GROUPS}. Choose a width whose every channel count is a multiple of "
                f"{GN_GROUPS} (e.g. 0.5 or 1.0 for ResNet-50), or BN/SyncBN/FrozenBN")
    return norm


def stage_spec(cfg, stage: int, width: float) -> dict:
    """Channel counts of stage ``res{stage}`` (2..5) at ``width``: ``in``, ``bottleneck``, ``out``, blocks."""
    kind, blocks = _check_resnet_cfg(cfg)
    r = cfg.MODEL.RESNETS
    i = stage - 2
    full_out = r.RES2_OUT_CHANNELS * 2 ** i
    full_in = r.STEM_OUT_CHANNELS if i == 0 else r.RES2_OUT_CHANNELS * 2 ** (i - 1)
    full_mid = r.NUM_GROUPS * r.WIDTH_PER_GROUP * 2 ** i
    return {"kind": kind, "num_blocks": blocks[i], "in": active_channels(full_in, width),
            "bottleneck": active_channels(full_mid, width), "out": active_channels(full_out, width)}


def make_us3l_stage(cfg, stage: int, width: float, first_stride: int | None = None, dilation: int = 1):
    """The blocks of ``res{stage}`` at ``width`` (used by the backbone and by the C4 ``res5`` head)."""
    spec = stage_spec(cfg, stage, width)
    if first_stride is None:
        first_stride = 1 if stage == 2 else 2
    strides = [first_stride] + [1] * (spec["num_blocks"] - 1)
    mids = [spec["bottleneck"]] if spec["kind"] == "bottleneck" else []
    norm = _norm(cfg, [spec["out"], *mids], width)
    if spec["kind"] == "basic":
        return ResNet.make_stage(BasicBlock, spec["num_blocks"], in_channels=spec["in"], out_channels=spec["out"],
                                 stride_per_block=strides, norm=norm)
    return ResNet.make_stage(BottleneckBlock, spec["num_blocks"], in_channels=spec["in"], out_channels=spec["out"],
                             bottleneck_channels=spec["bottleneck"], stride_per_block=strides, norm=norm,
                             stride_in_1x1=cfg.MODEL.RESNETS.STRIDE_IN_1X1, dilation=dilation)


@BACKBONE_REGISTRY.register()
def build_us3l_resnet_backbone(cfg, input_shape: ShapeSpec) -> US3LResNet:
    """Detectron2 ResNet at ``MODEL.US3L.WIDTH_MULT`` (C4 models: ``OUT_FEATURES: ["res4"]``)."""
    width = us3l_width(cfg)
    r = cfg.MODEL.RESNETS
    _check_resnet_cfg(cfg)
    if r.RES5_DILATION not in (1, 2):
        raise ValueError(f"MODEL.RESNETS.RES5_DILATION must be 1 or 2, got {r.RES5_DILATION}")
    stem_out = active_channels(r.STEM_OUT_CHANNELS, width)
    stem = BasicStem(input_shape.channels, stem_out, norm=_norm(cfg, [stem_out], width))
    depth_of = {"res2": 1, "res3": 2, "res4": 3, "res5": 4}
    num_stages = max(depth_of.get(f, 0) for f in r.OUT_FEATURES)  # unused stages are not built
    stages = []
    for stage in range(2, 2 + num_stages):
        dilation = r.RES5_DILATION if stage == 5 else 1
        first_stride = 1 if stage == 2 or dilation == 2 else 2
        stages.append(make_us3l_stage(cfg, stage, width, first_stride, dilation))
    return US3LResNet(stem, stages, depth=r.DEPTH, width=width, out_features=r.OUT_FEATURES,
                      freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT)


@BACKBONE_REGISTRY.register()
def build_us3l_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """FPN on the width-sized ResNet; its lateral convs take the active width's channels."""
    bottom_up = build_us3l_resnet_backbone(cfg, input_shape)
    return FPN(bottom_up=bottom_up, in_features=cfg.MODEL.FPN.IN_FEATURES, out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
               norm=cfg.MODEL.FPN.NORM, top_block=LastLevelMaxPool(), fuse_type=cfg.MODEL.FPN.FUSE_TYPE)


def find_us3l_resnet(model) -> US3LResNet | None:
    """The width-sized ResNet inside a detector (``None`` for other backbones)."""
    for m in model.modules():
        if isinstance(m, US3LResNet):
            return m
    return None
