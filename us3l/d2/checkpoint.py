"""Loading weights into a width-sized detector: never a silently skipped tensor.

Detectron2 only warns when a tensor's shape does not fit, so a width mismatch would load silently.
:class:`US3LCheckpointer` places a converted US3L ``.pkl`` (ONE full-width file for every width) onto the
trunk explicitly (``backbone.bottom_up.*`` for FPN, ``backbone.*`` + ``roi_heads.res5.*`` for C4), selects
the BN statistics of the model's width, prefix-slices the tensors, logs a :class:`us3l.checkpoint.LoadReport`
and raises :class:`us3l.checkpoint.CheckpointError` on any missing, unexpected or mismatched backbone key
(heads may be missing: they start from scratch). Any other checkpoint must fit exactly: a full detector
checkpoint (``model_final.pth``, a resume) in every key, backbone-only weights in every trunk key.
"""
from __future__ import annotations

import logging
import re

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts
from detectron2.modeling.backbone.resnet import BottleneckBlock

from ..checkpoint import (BACKBONE_FORMAT, PRETRAIN_FORMAT, CheckpointError, LoadReport, select_width_stats,
                          slice_to_shapes)
from ..ops import DEFAULT_WIDTH_RANGE
from .backbone import find_us3l_resnet
from .config import bn_stats_policy
from .pkl_format import META_KEY, read_pkl

logger = logging.getLogger("detectron2.us3l.checkpoint")  # shown by Detectron2's logging set-up

_TRUNK = re.compile(r"^(stem|res[2-5])\.")
_STATS = re.compile(r"(running_mean|running_var|num_batches_tracked)(_w\d{4})?$")
_CONVERT_HINT = "convert it first: python tools/convert_pretrain_to_d2.py {src} OUT.pkl, then set MODEL.WEIGHTS OUT.pkl"


def trunk_keys(names, prefix: str) -> list[str]:
    """ResNet trunk keys of a detector: ``<prefix>stem|res2..res5.*`` and a C4 model's ``roi_heads.res5.*``."""
    return [k for k in names if (k.startswith(prefix) and _TRUNK.match(k[len(prefix):]))
            or k.startswith("roi_heads.res5.")]


def is_full_detector(state) -> bool:
    """A fine-tuned / resumable detector checkpoint (has heads), as opposed to pretrained backbone weights."""
    return any(k.startswith(("proposal_generator.", "roi_heads.")) and not k.startswith("roi_heads.res5.")
               for k in state)


def _us3l_kind(obj) -> str | None:
    """Which US3L training-side format ``obj`` is (those must go through the converter), else ``None``."""
    if not isinstance(obj, dict):
        return None
    if obj.get("format") in (BACKBONE_FORMAT, PRETRAIN_FORMAT):
        return obj["format"]
    inner = obj.get("state_dict")
    if isinstance(inner, dict) and any(str(k).startswith("module.encoder_q.") for k in inner):
        return "reference-code"
    return None


class US3LCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` that slices a full-width US3L backbone to the model and fails loudly."""

    def __init__(self, model, save_dir: str = "", *, cfg=None, **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.bn_stats = bn_stats_policy(cfg) if cfg is not None else "calibrated"
        self.last_report: LoadReport | None = None

    # -- reading -------------------------------------------------------------------------------------------
    def _load_file(self, filename: str):
        if filename.endswith(".pkl"):
            data = read_pkl(filename)  # clear errors for torch files named .pkl
            if "model" in data and "__author__" in data:
                return data
            return super()._load_file(filename)  # Caffe2 / Detectron1 model zoo
        try:
            loaded = super()._load_file(filename)
        except CheckpointError:  # refused or unreadable (us3l.checkpoint.safe_load): its message says why
            raise
        except Exception as e:
            raise CheckpointError(
                f"cannot read {filename}: {type(e).__name__}: {e}. A US3L pre-training checkpoint must be "
                f"converted: {_CONVERT_HINT.format(src=filename)}") from e
        kind = _us3l_kind(loaded) or _us3l_kind(loaded.get("model"))  # Detectron2 wraps foreign dicts in "model"
        if kind:
            raise CheckpointError(f"{filename} is a US3L {kind} checkpoint, not Detectron2 weights; "
                                  f"{_CONVERT_HINT.format(src=filename)}")
        return loaded

    # -- loading -------------------------------------------------------------------------------------------
    def _load_model(self, checkpoint):
        model_state = self.model.state_dict()
        meta = checkpoint.get(META_KEY)
        if meta is not None:
            checkpoint["model"] = self._place_us3l_backbone(checkpoint["model"], meta, model_state)
        else:
            state = checkpoint["model"]
            if checkpoint.get("matching_heuristics", False):
                self._convert_ndarray_to_tensor(state)
                state = align_and_update_state_dicts(model_state, state,
                                                     c2_conversion=checkpoint.get("__author__") == "Caffe2")
            state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
            self._check_exact(state, model_state)
            checkpoint["model"] = state
        checkpoint["matching_heuristics"] = False  # names are final: no fuzzy matching after our checks
        return super()._load_model(checkpoint)

    def _report(self, report: LoadReport, what: str) -> None:
        self.last_report = report
        logger.info("load report (%s): %s", what, report.summary())
        report.raise_if_bad(f"loading {what}")

    def _check_exact(self, state, model_state) -> None:
        """Any other checkpoint must fit exactly: every key of a full detector checkpoint (eval-only, resume,
        fine-tuned weights), or every trunk key of backbone-only weights (heads then start from scratch)."""
        if is_full_detector(state):
            scope = [k for k in model_state if k not in ("pixel_mean", "pixel_std")]
            what = "a Detectron2 detector checkpoint"
        else:
            scope = trunk_keys(model_state, self._trunk_prefix(model_state))
            what = "Detectron2 backbone weights"
        report = LoadReport()
        for k in scope:
            if k not in state:
                if not k.endswith("num_batches_tracked"):
                    report.missing.append(k)
            elif tuple(state[k].shape) != tuple(model_state[k].shape):
                report.mismatched.append(f"{k}: checkpoint {tuple(state[k].shape)} vs model "
                                         f"{tuple(model_state[k].shape)} (saved at another width?)")
            else:
                report.loaded.append(k)
        report.unexpected = [k for k in state if k not in model_state and (
            k.startswith(("backbone.", "roi_heads.res5.")) or is_full_detector(state))
            and "anchor_generator.cell_anchors" not in k]
        self._report(report, what)

    def _place_us3l_backbone(self, state, meta, model_state) -> dict[str, torch.Tensor]:
        trunk = find_us3l_resnet(self.model)
        if trunk is None:
            raise CheckpointError("this is a US3L backbone .pkl but the model has no US3L backbone: set "
                                  "MODEL.BACKBONE.NAME to build_us3l_resnet_fpn_backbone or build_us3l_resnet_backbone")
        width, arch = trunk.us3l_width, f"resnet{trunk.us3l_depth}"
        if not isinstance(meta, dict) or "arch" not in meta:
            raise CheckpointError(f"the {META_KEY} metadata of this .pkl has no 'arch' entry: {meta!r}")
        if meta.get("arch") != arch:
            raise CheckpointError(f"the checkpoint is a {meta.get('arch')} backbone but the model is {arch} "
                                  f"(MODEL.RESNETS.DEPTH={trunk.us3l_depth}); use a checkpoint of the same depth")
        lo, hi = (float(v) for v in meta.get("width_range", DEFAULT_WIDTH_RANGE))  # as load_backbone assumes
        if not lo - 1e-9 <= width <= hi + 1e-9:
            raise CheckpointError(f"MODEL.US3L.WIDTH_MULT={width} is outside the width range [{lo}, {hi}] this "
                                  "backbone was pre-trained for")
        self._check_stride_in_3x3()
        tensors = {k: torch.as_tensor(v) for k, v in state.items()}
        bad = [k for k in tensors if not _TRUNK.match(k)]
        if bad:
            raise CheckpointError(f"the US3L .pkl holds keys that are not ResNet trunk keys, e.g. {bad[:5]}")

        prefix = self._trunk_prefix(model_state)
        res5 = next((p for p in (prefix, "roi_heads.") if f"{p}res5.0.conv1.weight" in model_state), None)
        if res5 is None:  # e.g. OUT_FEATURES stop at res4 and the heads have no res5
            tensors = {k: v for k, v in tensors.items() if not k.startswith("res5.")}
        target = {k: model_state[k] for k in trunk_keys(model_state, prefix)}

        if any(k.endswith("running_mean") for k in target):
            tensors = select_width_stats(tensors, width, self.bn_stats)
        else:  # GroupNorm: BN statistics have no use
            tensors = {k: v for k, v in tensors.items() if not _STATS.search(k)}
        placed = {}
        for k, v in tensors.items():
            name = (res5 if k.startswith("res5.") else prefix) + k
            if name.endswith("num_batches_tracked") and name not in target:
                continue  # FrozenBN keeps no counter
            placed[name] = v
        for k in target:  # a counter absent from the checkpoint carries no information
            if k.endswith("num_batches_tracked") and k not in placed:
                placed[k] = target[k]
        sliced, report = slice_to_shapes(placed, {k: v.shape for k, v in target.items()})
        self._report(report, f"the US3L {arch} backbone ({meta.get('source') or 'pkl'}) at width {width}, "
                             f"BN statistics '{self.bn_stats}'")
        return sliced

    def _trunk_prefix(self, model_state) -> str:
        stems = [k[: -len("stem.conv1.weight")] for k in model_state if k.endswith("stem.conv1.weight")]
        if len(stems) != 1:
            raise CheckpointError(f"cannot locate the ResNet trunk in the model (stems found: {stems})")
        return stems[0]

    def _check_stride_in_3x3(self) -> None:
        for m in self.model.modules():
            if isinstance(m, BottleneckBlock) and m.stride > 1:
                if m.conv1.stride != (1, 1):
                    raise CheckpointError("US3L backbones put the stride in the 3x3 conv: set "
                                          "MODEL.RESNETS.STRIDE_IN_1X1 False (it silently costs AP otherwise)")
                return
