"""US3L and the baselines of the paper's Table 1, as per-width loss functions.

A method is asked for the loss of ONE width at a time, widest first (the trainer owns the width loop and the
optimizer, so per-width stepping and gradient accumulation share this code). Per-iteration state (teacher
targets, the online max network's outputs) lives in a ``ctx`` dict created by :meth:`begin_iteration` and
filled in the max-width pass.

* ``us3l``: EMA teacher at width 1.0, updated once per iteration; base loss at the max width (BYOL cosine,
  the reference's SimCLR-momentum NT-Xent, or a MoCo-style InfoNCE against the teacher); sub-networks distil
  through a separate auxiliary head against the teacher's targets of the same iteration (cross-view cosine),
  optionally plus feature distillation.
* ``byol_noaux``: the same without the auxiliary head (sub-networks reuse the predictor).
* ``simsiam_naive``: every width its own SimSiam loss (collapses, Table 1).
* ``simsiam_inplace``: SimSiam at the max width; sub-networks distil from the ONLINE max network's outputs.
* ``simclr``: every width its own NT-Xent loss.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models import build_us_model
from ..models.resnet import stage_channels
from ..width import get_width, set_width
from .ema import ema_update, make_teacher, momentum_at
from .heads import feature_adapter, mlp
from .losses import cross_view_cosine, cross_view_info_nce, cross_view_nt_xent, normalized_std, nt_xent

METHODS = ("us3l", "byol_noaux", "simsiam_naive", "simsiam_inplace", "simclr")
BASE_LOSSES = ("byol", "simclr_momentum", "moco")


@dataclass(frozen=True)
class HeadSpec:
    """The heads one method builds, resolved from the ``method`` config section by :func:`resolve_heads`
    (the defaults live in ``us3l.engine.config.MethodConfig`` only)."""
    proj_hidden: int
    proj_dim: int
    proj_layers: int
    proj_last_bn: bool
    proj_hidden_bias: bool
    pred_hidden: int
    predictor: bool
    aux_head: bool
    feature_distill_stages: tuple[int, ...]
    width_range: tuple[float, float]


def resolve_heads(mm, width_range=(0.25, 1.0), arch: str = "resnet18") -> HeadSpec:
    """Heads of method config ``mm``; ``ValueError`` naming the fix for a combination that cannot train.

    ``predictor`` / ``aux_head`` left unset (``None``) take the method's own choice; set explicitly, they must
    agree with it. The projector's hidden linear layers carry a bias where the reference's do (its SimCLR
    classes), so that reference checkpoints map tensor for tensor.
    """
    name, base = mm.name, mm.base_loss
    what = f"method {name}" + (f" with base_loss {base}" if name in ("us3l", "byol_noaux") else "")
    needs_pred = name in ("simsiam_naive", "simsiam_inplace", "byol_noaux") or (name == "us3l" and base == "byol")
    no_pred = name == "simclr" or (name in ("us3l", "byol_noaux") and base == "simclr_momentum")
    if name == "byol_noaux" and base == "simclr_momentum":
        raise ValueError("method byol_noaux cannot use base_loss simclr_momentum: that recipe has no predictor on "
                         "the max branch, and a predictor trained only by sub-networks is US3L's auxiliary head; "
                         "use method.name=us3l (or base_loss byol)")
    predictor = (needs_pred or (name in ("us3l", "byol_noaux") and base == "moco")) if mm.predictor is None \
        else bool(mm.predictor)
    if needs_pred and not predictor:
        raise ValueError(f"{what} cannot train without a predictor (its targets would make the outputs collapse); "
                         "remove method.predictor or set it true")
    if no_pred and predictor:
        raise ValueError(f"{what} has no predictor on the max branch (the reference's recipe); remove "
                         "method.predictor or set it false" + (" (base_loss moco takes one)" if name == "us3l" else ""))
    aux = (name == "us3l") if mm.aux_head is None else bool(mm.aux_head)
    if aux and name != "us3l":
        raise ValueError(f"method {name} has no auxiliary head (only us3l has one; byol_noaux is US3L without it); "
                         "remove method.aux_head or set it false")
    if name == "us3l" and not aux and not predictor:
        raise ValueError(f"{what} needs a head for its sub-networks to distil through: set method.aux_head=true")
    stages: tuple[int, ...] = ()
    if mm.feature_distill_weight > 0:
        if name != "us3l":
            raise ValueError(f"feature distillation is part of us3l only; set method.feature_distill_weight=0 "
                             f"for {name}")
        if not mm.feature_distill_stages:
            raise ValueError("method.feature_distill_weight > 0 needs method.feature_distill_stages (1..4)")
        if not arch.startswith("resnet"):
            raise ValueError(f"feature distillation needs a ResNet backbone (stage features), not {arch}; "
                             "set method.feature_distill_weight=0")
        stages = tuple(mm.feature_distill_stages)
    if mm.proj_layers < 1:
        raise ValueError(f"method.proj_layers must be >= 1, got {mm.proj_layers}")
    return HeadSpec(proj_hidden=mm.proj_hidden, proj_dim=mm.proj_dim, proj_layers=mm.proj_layers,
                    proj_last_bn=mm.proj_last_bn, proj_hidden_bias=no_pred, pred_hidden=mm.pred_hidden,
                    predictor=predictor, aux_head=aux, feature_distill_stages=stages,
                    width_range=tuple(width_range))


class OnlineNet(nn.Module):
    """Slimmable backbone (state-dict prefix ``backbone.``) + full-width heads."""

    def __init__(self, backbone: nn.Module, spec: HeadSpec):
        super().__init__()
        self.backbone = backbone
        feat = backbone.feature_dim
        self.projector = mlp(feat, spec.proj_hidden, spec.proj_dim, spec.proj_layers, spec.proj_last_bn,
                             slice_input=not _fixed_feature(backbone), first_bias=True,
                             hidden_bias=spec.proj_hidden_bias, width_range=spec.width_range)
        self.predictor = mlp(spec.proj_dim, spec.pred_hidden, spec.proj_dim) if spec.predictor else None
        self.aux_head = mlp(spec.proj_dim, spec.pred_hidden, spec.proj_dim) if spec.aux_head else None
        self.adapters = None
        if spec.feature_distill_stages:
            if not hasattr(backbone, "forward_stages"):
                raise ValueError("feature distillation needs a backbone with forward_stages (ResNet)")
            chans = stage_channels(backbone.depth)
            self.adapters = nn.ModuleDict({str(s): feature_adapter(chans[s - 1], spec.width_range)
                                           for s in spec.feature_distill_stages})

    def encode(self, x: torch.Tensor, with_stages: bool = False):
        """(projector output, stage features or None)."""
        if with_stages:
            stages = self.backbone.forward_stages(x)
            h = torch.flatten(self.backbone.avgpool(stages[-1]), 1)
            return self.projector(h), stages
        return self.projector(self.backbone(x)), None


class Encoder(nn.Module):
    """The teacher: backbone + projector with the online network's parameter names."""

    def __init__(self, backbone: nn.Module, projector: nn.Module):
        super().__init__()
        self.backbone, self.projector = backbone, projector

    def forward(self, x, with_stages: bool = False):
        if with_stages:
            stages = self.backbone.forward_stages(x)
            return self.projector(torch.flatten(self.backbone.avgpool(stages[-1]), 1)), stages
        return self.projector(self.backbone(x)), None


def _fixed_feature(backbone) -> bool:
    return type(backbone).__name__ == "MobileNetV2"  # its 1280-d head never shrinks


class SSLMethod(nn.Module):
    name = "base"

    def __init__(self, online: OnlineNet):
        super().__init__()
        self.online = online
        self.teacher: nn.Module | None = None
        self.max_width = 1.0  # the width of each iteration's first pass (and of the teacher)

    def set_max_width(self, width: float) -> None:
        """Train an individual network of this width (the paper's "individually trained" row): its first and
        only pass is at ``width``, and a teacher, if any, runs at ``width`` too."""
        self.max_width = float(width)
        if self.teacher is not None:
            set_width(self.teacher, self.max_width)

    def begin_iteration(self, it: int, total: int) -> dict:
        return {"it": it, "total": total, "max_done": False}

    def width_loss(self, views, ctx: dict) -> tuple[torch.Tensor, dict]:  # pragma: no cover - abstract
        raise NotImplementedError

    def reg_parameters(self, is_max: bool) -> list[torch.Tensor]:
        """Parameters group regularization penalizes at this width, as the reference: backbone and projector
        always; the prediction heads (predictor and auxiliary head) at sub-widths only; never the teacher or
        the feature adapters."""
        mods = [self.online.backbone, self.online.projector]
        if not is_max:
            mods += [m for m in (self.online.predictor, self.online.aux_head) if m is not None]
        return [p for m in mods for p in m.parameters() if p.requires_grad]

    def _is_max(self, ctx) -> bool:
        if not ctx["max_done"]:
            if get_width(self.online.backbone) < self.max_width:
                raise RuntimeError(f"the first width of an iteration must be {self.max_width:g} (the max network)")
            ctx["max_done"] = True
            return True
        return False


class US3L(SSLMethod):
    name = "us3l"

    def __init__(self, online: OnlineNet, base_loss="byol", temperature=0.5, ema_momentum=0.99,
                 ema_schedule="constant", distill_weight=1.0, feature_distill_weight=0.0):
        super().__init__(online)
        if base_loss not in BASE_LOSSES:
            raise ValueError(f"unknown base loss {base_loss!r}; choose from {BASE_LOSSES}")
        if base_loss == "byol" and online.predictor is None:
            raise ValueError("the BYOL base loss needs a predictor")
        if base_loss == "simclr_momentum" and online.predictor is not None:
            raise ValueError("the SimCLR-momentum base loss has no predictor on the max branch")
        self.teacher = make_teacher(Encoder(online.backbone, online.projector))
        self.base_loss, self.temperature = base_loss, temperature
        self.ema_momentum, self.ema_schedule = ema_momentum, ema_schedule
        momentum_at(ema_momentum, ema_schedule, 0.0)  # validates the schedule name
        self.distill_weight, self.feature_distill_weight = distill_weight, feature_distill_weight

    def _sub_head(self):
        """The sub-networks' distillation head: the auxiliary head, else (``byol_noaux``) the predictor."""
        return self.online.aux_head if self.online.aux_head is not None else self.online.predictor

    def width_loss(self, views, ctx):
        x1, x2 = views
        feat = self.online.adapters is not None and self.feature_distill_weight > 0
        if self._is_max(ctx):
            m = momentum_at(self.ema_momentum, self.ema_schedule, ctx["it"] / max(ctx["total"], 1))
            ema_update(self.teacher, self.online, m)  # ONCE per iteration
            with torch.no_grad():
                t1, ts1 = self.teacher(x1, feat)
                t2, ts2 = self.teacher(x2, feat)
            ctx.update(t1=t1.detach(), t2=t2.detach(), ts1=ts1, ts2=ts2, momentum=m)
            z1, _ = self.online.encode(x1)
            z2, _ = self.online.encode(x2)
            if self.base_loss == "byol":
                loss = cross_view_cosine(self.online.predictor(z1), self.online.predictor(z2), t1, t2)
            elif self.base_loss == "simclr_momentum":  # the projection itself, negatives from [student; teacher]
                loss = cross_view_nt_xent(z1, z2, t1, t2, self.temperature)
            else:
                q1, q2 = (self.online.predictor(z1), self.online.predictor(z2)) if self.online.predictor else (z1, z2)
                loss = cross_view_info_nce(q1, q2, t1, t2, self.temperature)
            return loss, {"std": normalized_std(z1), "dim": z1.shape[1]}
        head = self._sub_head()
        z1, s1 = self.online.encode(x1, feat)
        z2, s2 = self.online.encode(x2, feat)
        loss = self.distill_weight * cross_view_cosine(head(z1), head(z2), ctx["t1"], ctx["t2"])
        if feat:
            fd = 0.0
            for key, adapter in self.online.adapters.items():
                i = int(key) - 1
                fd = fd + F.mse_loss(adapter(s1[i]), ctx["ts1"][i]) + F.mse_loss(adapter(s2[i]), ctx["ts2"][i])
            loss = loss + self.feature_distill_weight * fd / (2 * len(self.online.adapters))
        return loss, {"std": normalized_std(z1), "dim": z1.shape[1]}


class SimSiamNaive(SSLMethod):
    name = "simsiam_naive"

    def width_loss(self, views, ctx):
        self._is_max(ctx)
        z1, _ = self.online.encode(views[0])
        z2, _ = self.online.encode(views[1])
        p = self.online.predictor
        return cross_view_cosine(p(z1), p(z2), z1, z2), {"std": normalized_std(z1), "dim": z1.shape[1]}


class SimSiamInplace(SSLMethod):
    name = "simsiam_inplace"

    def width_loss(self, views, ctx):
        z1, _ = self.online.encode(views[0])
        z2, _ = self.online.encode(views[1])
        p = self.online.predictor
        if self._is_max(ctx):
            ctx.update(t1=z1.detach(), t2=z2.detach())  # targets from the ONLINE max network
            loss = cross_view_cosine(p(z1), p(z2), z1, z2)
        else:
            loss = cross_view_cosine(p(z1), p(z2), ctx["t1"], ctx["t2"])
        return loss, {"std": normalized_std(z1), "dim": z1.shape[1]}


class SimCLR(SSLMethod):
    name = "simclr"

    def __init__(self, online: OnlineNet, temperature: float = 0.5):
        super().__init__(online)
        self.temperature = temperature

    def width_loss(self, views, ctx):
        self._is_max(ctx)
        z1, _ = self.online.encode(views[0])
        z2, _ = self.online.encode(views[1])
        return nt_xent(z1, z2, self.temperature), {"std": normalized_std(z1), "dim": z1.shape[1]}


def build_method(cfg) -> SSLMethod:
    """Method from the ``model`` and ``method`` config sections (see :mod:`us3l.engine.config`)."""
    mc, mm = cfg.model, cfg.method
    if mm.name not in METHODS:
        raise ValueError(f"unknown method {mm.name!r}; choose from {', '.join(METHODS)}")
    spec = resolve_heads(mm, tuple(mc.width_range), mc.arch)
    backbone = build_us_model(mc.arch, 0, mc.cifar_stem, tuple(mc.width_range))
    online = OnlineNet(backbone, spec)
    if mm.name in ("us3l", "byol_noaux"):
        method = US3L(online, mm.base_loss, mm.temperature, mm.ema_momentum, mm.ema_schedule, mm.distill_weight,
                      mm.feature_distill_weight if spec.feature_distill_stages else 0.0)
    elif mm.name == "simsiam_naive":
        method = SimSiamNaive(online)
    elif mm.name == "simsiam_inplace":
        method = SimSiamInplace(online)
    else:
        method = SimCLR(online, mm.temperature)
    if mc.individual_width is not None:
        method.set_max_width(mc.individual_width)
    return method
