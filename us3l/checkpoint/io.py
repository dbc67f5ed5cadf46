"""Reading and writing backbone checkpoints in every format the project meets.

Formats (all hold only tensors and plain metadata; they load with ``torch.load(weights_only=True)``):

* ``us3l.backbone/1``: ``{"format", "meta", "state_dict"}``, torchvision names at FULL width, plus
  per-width BN statistics ``<bn>.running_mean_w0500`` ... (see :mod:`us3l.ops.norm`).
  ``meta = {"arch", "cifar_stem", "width_range", "calibrated_widths", ...}``.
* ``us3l.pretrain/1``: a pre-training checkpoint; its ``model`` entry holds the online network,
  whose ``backbone.*`` keys are the slimmable backbone.
* the US3L reference code's pre-training and per-width calibration files (:mod:`.reference`).
* a plain torchvision state dict (optionally under ``state_dict`` / ``model`` and ``module.``), at full
  width or already sliced to one width (the reference's ``..._for_detection.pth.tar``).
* a Detectron2 ``.pkl`` (a pickle of numpy arrays under ``model``, Detectron2 trunk names, optionally under
  ``backbone.bottom_up.``; ours carry the backbone's meta under ``__us3l__``), read as plain data.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping

import torch

from ..ops.width_state import DEFAULT_WIDTH_RANGE
from .arch import infer_arch
from .keymaps import D2_FPN_TRUNK_PREFIX, d2_to_tv, rename_all
from .reference import extract_reference, is_reference, width_from_name
from .report import CheckpointError, LoadReport
from .safe_load import is_pickle_file, load_pickle, load_torch
from .slicing import calibrated_widths_in, has_native_stats

BACKBONE_FORMAT = "us3l.backbone/1"
PRETRAIN_FORMAT = "us3l.pretrain/1"


def atomic_save(obj, path: str) -> None:
    """Write to a temporary file in the same folder, then rename: a crash never leaves half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def read_checkpoint(path: str):
    """A torch checkpoint, loaded weights-only (never runs code from the file): :func:`safe_load.load_torch`."""
    return load_torch(path)


def read_framework_checkpoint(path: str):
    """A Detectron2 / MMDetection training checkpoint (numpy scalars, mmengine ``HistoryBuffer`` beside the
    tensors): weights-only, with :func:`safe_load.load_torch`'s scoped trainer-state allowlist."""
    return load_torch(path)


def is_backbone_file(obj) -> bool:
    """A US3L / reference / torchvision backbone file (as opposed to a detection framework's own weights)."""
    if not isinstance(obj, Mapping):
        return False
    if obj.get("format") in (BACKBONE_FORMAT, PRETRAIN_FORMAT) or is_reference(obj):
        return True
    inner = next((obj[k] for k in ("state_dict", "model") if isinstance(obj.get(k), Mapping)), obj)
    return "conv1.weight" in inner and any(str(k).startswith("layer1.") for k in inner)


def _strip(state: Mapping, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _inner_state(ckpt: Mapping) -> Mapping:
    for key in ("state_dict", "model"):
        if isinstance(ckpt.get(key), Mapping):
            return ckpt[key]
    return ckpt


def _plain_backbone(ckpt: Mapping, report: LoadReport) -> tuple[dict, dict]:
    """A torchvision-named state dict (optionally under ``state_dict``/``model``, ``module.``/``backbone.``)."""
    state = _inner_state(ckpt)
    if any(k.startswith("module.") for k in state):
        state = _strip(state, "module.")
    if any(k.startswith("backbone.") for k in state) and "conv1.weight" not in state:
        state = _strip(state, "backbone.")
    for k in [k for k in state if k.startswith(("fc.", "classifier."))]:
        report.dropped.append(f"{k} (classifier)")
    state = {k: v for k, v in state.items() if not k.startswith(("fc.", "classifier."))}
    return state, {}


def _fixed_width(state: Mapping, arch: str, cifar: bool, width: float | None) -> float | None:
    """Width of a backbone whose tensors are already sliced (the reference's ``_for_detection`` files), else
    ``None``; the width comes from ``width`` or the shapes, and every shape must be the one of that width."""
    from ..models import build_static_model

    first = state["features.0.0.weight" if arch == "mobilenet_v2" else "conv1.weight"]
    full = 32 if arch == "mobilenet_v2" else 64
    if first.shape[0] == full:
        return None
    w = float(width) if width is not None else round(first.shape[0] / full, 3)
    if arch != "mobilenet_v2" and width is None:  # layer4's output resolves the width more finely
        last = [k for k in state if k.startswith("layer4.") and k.endswith(".weight") and state[k].dim() == 4][-1]
        w = round(state[last].shape[0] / (2048 if arch == "resnet50" else 512), 3)
    shapes = {k: tuple(v.shape) for k, v in build_static_model(arch, w, 0, cifar).state_dict().items()}
    bad = [k for k, v in state.items() if k in shapes and tuple(v.shape) != shapes[k]]
    if bad or not any(k in shapes for k in state):
        raise CheckpointError(f"the tensors are narrower than a full-width {arch} but are not a width-{w} "
                              f"{arch} either (e.g. {bad[:3]}); pass the width the file was exported at")
    return w


def extract_backbone(ckpt, source: str = "", width: float | None = None,
                     report: LoadReport | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """Backbone state dict (torchvision names) and metadata from any supported checkpoint.

    ``meta["calibrated_widths"]`` lists the widths whose BN statistics are real; any other statistics in
    the state (1.0's buffers of a pre-training run) are placeholders that consumers refuse: a backbone
    without calibration is calibrated at NO width (1.0 included). ``meta["fixed_width"]`` marks tensors
    already sliced to one width. ``width`` names the width of a reference calibration / detection file whose
    name does not say it. Keys left out on purpose are appended to ``report.dropped``.
    """
    report = report if report is not None else LoadReport()
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f"a checkpoint must be a dict, got {type(ckpt).__name__}")
    fmt = ckpt.get("format")
    if fmt == BACKBONE_FORMAT:
        state, meta = dict(ckpt["state_dict"]), dict(ckpt.get("meta") or {})
    elif fmt == PRETRAIN_FORMAT:
        state, meta = _strip(ckpt["model"], "backbone."), dict(ckpt.get("meta") or {})
        report.dropped += [f"{k} (pre-training head)" for k in ckpt["model"] if not k.startswith("backbone.")]
    elif is_reference(ckpt):
        state, meta = extract_reference(ckpt, source, width, report)
    else:
        state, meta = _plain_backbone(ckpt, report)
        meta.update({k: v for k, v in (ckpt.get("meta") or {}).items()} if isinstance(ckpt.get("meta"), Mapping)
                    else {})
    state = {k: torch.as_tensor(v) for k, v in state.items()}
    arch, cifar = infer_arch(state)
    if meta.get("arch", arch) != arch:
        raise CheckpointError(f"checkpoint metadata says {meta['arch']} but its tensors are {arch}")
    meta.update(arch=arch, cifar_stem=bool(meta.get("cifar_stem", cifar)))
    fixed = meta.get("fixed_width")
    if fixed is None and fmt is None and not is_reference(ckpt):
        fixed = _fixed_width(state, arch, meta["cifar_stem"], width if width is not None else width_from_name(source))
    if fixed is not None:
        meta.update(fixed_width=float(fixed), width_range=[float(fixed), float(fixed)])
    meta.setdefault("width_range", list(DEFAULT_WIDTH_RANGE))
    native = float(fixed) if fixed is not None else 1.0  # the width the standard running_mean/var belong to
    if "calibrated_widths" not in meta:  # ours always say; a plain file is a normally trained network, whose
        plain = fmt is None and not is_reference(ckpt)  # statistics are valid at its width
        meta["calibrated_widths"] = [native] if plain and has_native_stats(state) else []
    listed = [float(w) for w in meta.get("calibrated_widths", [])]
    # statistics at the native width count only where the file says they were calibrated (fresh buffers and
    # mixed-width training leave placeholders there, which every consumer refuses through this list)
    has_native = native in listed and has_native_stats(state)
    meta["calibrated_widths"] = sorted(set(calibrated_widths_in(state)) | ({native} if has_native else set()))
    return state, meta


def d2_pkl_backbone(data, source: str, report: LoadReport) -> dict:
    """A Detectron2 ``.pkl`` payload as a ``us3l.backbone/1`` dict (ours) or a plain state dict (stock):
    trunk names to torchvision's, numpy to tensors; a detector's other parts are listed in ``report.dropped``.
    Names that are not a ResNet trunk's (e.g. caffe2-era ``res2_0_branch2a_w``) stop with the keys that cannot
    be mapped."""
    import numpy as np

    if not isinstance(data, Mapping) or not isinstance(data.get("model"), Mapping):
        raise CheckpointError(f"{source}: a Detectron2 .pkl holds {{'model': {{name: array}}, ...}}; this pickle "
                              f"has {type(data).__name__} {list(data)[:5] if isinstance(data, Mapping) else ''}")
    model = dict(data["model"])
    prefix = D2_FPN_TRUNK_PREFIX
    if any(k.startswith(prefix) for k in model):
        report.dropped += [f"{k} (not the backbone trunk)" for k in model if not k.startswith(prefix)]
        model = {k[len(prefix):]: v for k, v in model.items() if k.startswith(prefix)}
    state = {k: torch.as_tensor(np.asarray(v)) for k, v in
             rename_all(model, d2_to_tv, f"reading the Detectron2 backbone {source}").items()}
    if not isinstance(data.get("__us3l__"), Mapping):  # a stock file: a normally trained (or sliced) network
        return {"state_dict": state}
    meta = {k: v for k, v in data["__us3l__"].items() if k != "format"}
    return {"format": BACKBONE_FORMAT, "meta": meta, "state_dict": state}


def load_backbone(path: str, width: float | None = None, report: LoadReport | None = None
                  ) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a backbone from any supported checkpoint file (clear error on corrupt or foreign files)."""
    report = report if report is not None else LoadReport()
    if is_pickle_file(path):  # Detectron2's .pkl: plain data only, any protocol (torch's loader reads none)
        return extract_backbone(d2_pkl_backbone(load_pickle(path), path, report), source=path, width=width,
                                report=report)
    return extract_backbone(read_checkpoint(path), source=path, width=width, report=report)


def save_backbone(state: Mapping[str, torch.Tensor], meta: Mapping, path: str) -> None:
    atomic_save({"format": BACKBONE_FORMAT, "meta": dict(meta),
                 "state_dict": {k: v.detach().cpu() for k, v in state.items()}}, path)
