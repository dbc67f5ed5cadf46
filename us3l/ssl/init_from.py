"""Start pre-training from another run's weights: backbone, heads and (when the file has one) the EMA teacher.

Sources (read through :func:`us3l.checkpoint.read_checkpoint`, weights only):

* the US3L reference code's pre-training checkpoint ``{"state_dict": {"module.<name>": tensor}}`` (``module.``
  optional). Its backbone ``encoder_q.*`` is read by :func:`us3l.checkpoint.extract_backbone`; the heads map as
  - ``encoder_q.fc.<i>``  -> the projector (the reference's projector replaces the backbone's classifier);
  - ``encoder_k.*``       -> the teacher (backbone and projector), the EMA encoder;
  - ``predictor.*``       -> the predictor where the max branch has one (BYOL), otherwise the auxiliary head
    (the reference's SimCLR-momentum uses its predictor only for sub-networks);
  - ``predictor_new.*``   -> the auxiliary head (BYOL's separate distillation head);
  - anything else (``proj_conv.*`` feature adapters, which hook another point of the network) is dropped and
    listed.
* ``us3l.pretrain/1`` (``model`` -> online network, ``teacher`` -> teacher) and ``us3l.backbone/1`` (backbone).

Every key is accounted for in an :class:`InitReport`; any shape difference is an error (nothing is sliced or
skipped in silence). Without a teacher in the file, the teacher starts as a copy of the initialised online net.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

import torch

from ..checkpoint import BACKBONE_FORMAT, PRETRAIN_FORMAT, CheckpointError, extract_backbone, read_checkpoint

_REFERENCE_RE = re.compile(r"^(?:module\.)?(encoder_q|encoder_k|predictor_new|predictor|proj_conv)\.(.*)$")


@dataclasses.dataclass
class InitReport:
    source: str = ""
    mapped: list[str] = dataclasses.field(default_factory=list)  # "checkpoint key -> model key"
    dropped: list[str] = dataclasses.field(default_factory=list)  # checkpoint keys with no place, and why
    kept_init: list[str] = dataclasses.field(default_factory=list)  # model keys the file does not set
    mismatched: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        """Counts, every dropped / mismatched key, and the kept-at-init keys grouped (BN statistics are many)."""
        lines = [f"init from {self.source}: {len(self.mapped)} tensors mapped, {len(self.dropped)} dropped, "
                 f"{len(self.kept_init)} model tensors kept at initialisation, {len(self.mismatched)} mismatched"]
        lines += [f"  mismatched: {k}" for k in self.mismatched] + [f"  dropped: {k}" for k in self.dropped]
        groups: dict[str, int] = {}
        for k in self.kept_init:
            head = k.split(".")[0] if not k.startswith("teacher.") else ".".join(k.split(".")[:2])
            leaf = k.rsplit(".", 1)[-1]
            kind = "BN statistics" if leaf in ("running_mean", "running_var", "num_batches_tracked") else leaf
            groups[f"{head}.* {kind}"] = groups.get(f"{head}.* {kind}", 0) + 1
        lines += [f"  kept at init: {n} x {g}" for g, n in sorted(groups.items())]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _strip_module(state: Mapping) -> dict:
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def _sources(ckpt: Mapping, path: str, method, report: InitReport) -> tuple[dict, dict]:
    """(online keys -> (source key, tensor), teacher keys -> ...) of any of the three formats."""
    fmt = ckpt.get("format")
    if fmt == PRETRAIN_FORMAT:
        src_online = {k: (f"model.{k}", v) for k, v in ckpt["model"].items()}
        src_teacher = {k: (f"teacher.{k}", v) for k, v in (ckpt.get("teacher") or {}).items()}
        if method.teacher is None:
            report.dropped.extend(f"teacher.{k} (this method has no EMA teacher)" for k in src_teacher)
            src_teacher = {}
        return src_online, src_teacher
    if fmt == BACKBONE_FORMAT:
        return {f"backbone.{k}": (k, v) for k, v in ckpt["state_dict"].items()}, {}
    state = ckpt.get("state_dict", ckpt)
    if not isinstance(state, Mapping) or not any(_REFERENCE_RE.match(k) for k in state):
        raise CheckpointError(f"{path} is neither a US3L reference pre-training checkpoint (module.encoder_q.*) "
                              f"nor a us3l.pretrain/1 or us3l.backbone/1 file")
    for key in ckpt:
        if key != "state_dict":
            report.dropped.append(f"[{key}] (training state of the reference run: this run starts afresh)")
    return _reference_sources(_strip_module(state), method, report)


def _reference_sources(state: Mapping, method, report: InitReport) -> tuple[dict, dict]:
    """(online keys -> tensor, teacher keys -> tensor) of a reference-code state dict."""
    online, teacher = method.online, method.teacher
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        m = _REFERENCE_RE.match(key)
        if m is None:
            report.dropped.append(f"{key} (not part of the reference's SSL model)")
            continue
        groups.setdefault(m.group(1), {})[m.group(2)] = value
    src_online = _encoder_sources(groups, "encoder_q")
    src_teacher = _encoder_sources(groups, "encoder_k")
    src_online.update(_head_sources(groups, online, report))
    for k in groups.get("proj_conv", {}):
        report.dropped.append(f"proj_conv.{k} (the reference's feature adapters hook layerX.1.bn2, ours the stage "
                              "outputs: not the same layer)")
    if teacher is None:
        for src, _ in src_teacher.values():
            report.dropped.append(f"{src} (this method has no EMA teacher)")
        src_teacher = {}
    return src_online, src_teacher


def _named(prefix: str, tensors: Mapping, src_prefix: str) -> dict:
    """``{our key: (reference key, tensor)}``."""
    return {prefix + k: (f"{src_prefix}{k}", v) for k, v in tensors.items()}


def _encoder_sources(groups: Mapping, branch: str) -> dict:
    """Backbone and projector of one reference encoder (``encoder_q`` online, ``encoder_k`` EMA teacher)."""
    tensors = groups.get(branch)
    if not tensors:
        return {}
    # the backbone goes through the checkpoint package's reader of reference files (its names -> ours)
    backbone, _ = extract_backbone({"state_dict": {f"module.encoder_q.{k}": v for k, v in tensors.items()}})
    fc = {k[len("fc."):]: v for k, v in tensors.items() if k.startswith("fc.")}
    return {**_named("backbone.", backbone, f"{branch}."), **_named("projector.", fc, f"{branch}.fc.")}


def _head_sources(groups: Mapping, online, report: InitReport) -> dict:
    """The reference's ``predictor`` / ``predictor_new`` on our predictor or auxiliary distillation head."""
    heads = {"predictor": "predictor" if online.predictor is not None else "aux_head", "predictor_new": "aux_head"}
    out = {}
    for name, target in heads.items():
        tensors = groups.get(name)
        if not tensors:
            continue
        taken_by_other = name == "predictor_new" and heads["predictor"] == "aux_head" and "predictor" in groups
        if getattr(online, target) is None or taken_by_other:
            report.dropped.extend(f"{name}.{k} (this method has no head for it)" for k in tensors)
            continue
        out.update(_named(f"{target}.", tensors, f"{name}."))
    return out


def _merged_state(module: torch.nn.Module, sources: Mapping, prefix: str, report: InitReport) -> dict:
    """``module``'s state dict with the source tensors in place; records mapped / dropped / mismatched keys."""
    own = module.state_dict()
    merged = dict(own)
    for key, (src, tensor) in sources.items():
        if key not in own:
            report.dropped.append(f"{src} (no {prefix}{key} in this model)")
            continue
        tensor = torch.as_tensor(tensor)
        if tuple(tensor.shape) != tuple(own[key].shape):
            report.mismatched.append(f"{src} -> {prefix}{key}: checkpoint {tuple(tensor.shape)} vs model "
                                     f"{tuple(own[key].shape)}")
            continue
        merged[key] = tensor.to(own[key].dtype)
        report.mapped.append(f"{src} -> {prefix}{key}")
    report.kept_init.extend(f"{prefix}{k}" for k in own if k not in sources)
    return merged


def init_from_checkpoint(method, path: str, arch: str | None = None, cifar_stem: bool | None = None) -> InitReport:
    """Initialise ``method``'s online network (and teacher) from the checkpoint at ``path``; see the module doc.

    Raises :class:`CheckpointError` on a shape mismatch, a backbone of another architecture, or a backbone
    parameter the file does not set.
    """
    ckpt = read_checkpoint(path)
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f"{path}: a checkpoint must be a dict, got {type(ckpt).__name__}")
    report = InitReport(source=path)
    src_online, src_teacher = _sources(ckpt, path, method, report)
    backbone_src = {k[len("backbone."):]: v for k, (_, v) in src_online.items() if k.startswith("backbone.")}
    if not backbone_src:
        raise CheckpointError(f"{path}: no backbone tensors found")
    if arch is not None:
        _, meta = extract_backbone({"state_dict": backbone_src})
        if meta["arch"] != arch or (cifar_stem is not None and meta["cifar_stem"] != cifar_stem):
            raise CheckpointError(f"{path} holds a {meta['arch']} backbone (CIFAR stem {meta['cifar_stem']}), the "
                                  f"config asks for {arch} (CIFAR stem {cifar_stem}): set model.arch / "
                                  "model.cifar_stem to match")
    online_state = _merged_state(method.online, src_online, "", report)
    teacher_state = (_merged_state(method.teacher, src_teacher, "teacher.", report)
                     if method.teacher is not None and src_teacher else None)
    if report.mismatched:
        raise CheckpointError(f"{path} does not fit this model (nothing was loaded):\n" + report.summary())
    params = dict(method.online.named_parameters())
    missing = [k for k in report.kept_init if k.startswith("backbone.") and k in params]
    if missing:
        raise CheckpointError(f"{path} does not set {len(missing)} backbone parameters, e.g. {missing[0]} "
                              f"(nothing was loaded):\n" + report.summary())
    method.online.load_state_dict(online_state, strict=True)
    if teacher_state is not None:
        method.teacher.load_state_dict(teacher_state, strict=True)
    if method.teacher is not None and teacher_state is None:
        own = method.online.state_dict()
        method.teacher.load_state_dict({k: own[k] for k in method.teacher.state_dict()}, strict=True)
        report.mapped.append("(no EMA teacher in the file) teacher <- copy of the initialised online network")
    return report
