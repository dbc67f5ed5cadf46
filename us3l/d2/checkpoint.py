"""Loading weights into a width-sized detector: never a silently skipped tensor.

Detectron2 only warns when a tensor's shape does not fit, so a width mismatch would load silently.
:class:`US3LCheckpointer` reads a converted US3L ``.pkl`` (ONE full-width file for every width) or any US3L
backbone file directly (ours, the reference code's pre-training / calibration / fixed-width files), fits it
to the trunk's width with :func:`us3l.checkpoint.fit_backbone` (BN statistics of the width, prefix slices,
load report) and places it: ``backbone.bottom_up.*`` for FPN, ``backbone.*`` + ``roi_heads.res5.*`` for C4.
It raises :class:`us3l.checkpoint.CheckpointError` on any missing, unexpected or mismatched backbone key
(heads may be missing: they start from scratch). Any other checkpoint must fit exactly: a full detector
checkpoint (``model_final.pth``, a resume) in every key, backbone-only weights in every trunk key.
Every file is read through :mod:`us3l.checkpoint.safe_load` (plain data only; nothing in a file runs).
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts
from detectron2.layers import FrozenBatchNorm2d

from ..checkpoint import CheckpointError, LoadReport, atomic_save, extract_backbone, fit_backbone, resume_files
from ..checkpoint.d2_format import META_KEY, backbone_to_d2, read_pkl
from ..checkpoint.io import is_backbone_file, read_framework_checkpoint
from .backbone import find_us3l_resnet
from .config import bn_stats_policy
from .conventions import check_conventions

logger = logging.getLogger("detectron2.us3l.checkpoint")  # shown by Detectron2's logging set-up

_TRUNK = re.compile(r"^(stem|res[2-5])\.")


def trunk_keys(names, prefix: str) -> list[str]:
    """ResNet trunk keys of a detector: ``<prefix>stem|res2..res5.*`` and a C4 model's ``roi_heads.res5.*``."""
    return [k for k in names if (k.startswith(prefix) and _TRUNK.match(k[len(prefix):]))
            or k.startswith("roi_heads.res5.")]


def is_full_detector(state) -> bool:
    """A fine-tuned / resumable detector checkpoint (has heads), as opposed to pretrained backbone weights."""
    return any(k.startswith(("proposal_generator.", "roi_heads.")) and not k.startswith("roi_heads.res5.")
               for k in state)


def detectron2_file(filename: str, data) -> dict:
    """What ``DetectionCheckpointer._load_file`` makes of a file's contents (model-zoo / Caffe2 ``.pkl``, pycls
    ``.pyth``, native ``.pth``), applied to data that the safe loaders read."""
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{filename}: a Detectron2 checkpoint is a dict, got {type(data).__name__}")
    if filename.endswith(".pkl"):
        if "model" in data and "__author__" in data:  # Detectron2 model zoo / our converted files
            return dict(data)
        data = data.get("blobs", data)  # Caffe2 / Detectron1 model zoo
        data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
        return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}
    if filename.endswith(".pyth"):  # pycls
        if "model_state" not in data:
            raise CheckpointError(f"{filename}: a pycls .pyth checkpoint holds 'model_state'")
        state = {k: v for k, v in data["model_state"].items() if not k.endswith("num_batches_tracked")}
        return {"model": state, "__author__": "pycls", "matching_heuristics": True}
    return dict(data) if "model" in data else {"model": data}


def read_safely(filename: str):
    """A checkpoint file's contents, read so that nothing in it runs: ``.pkl`` through the plain-data unpickler
    (Detectron2's own reader calls ``pickle.load``), anything else weights-only with the trainer-state allowlist
    (Detectron2's calls a bare ``torch.load``)."""
    return read_pkl(filename) if filename.endswith(".pkl") else read_framework_checkpoint(filename)


def _stock_load_file(self, filename: str) -> dict:
    """``DetectionCheckpointer._load_file``: read safely, interpreted as Detectron2 does; a US3L file is also checked
    against the model's input conventions (:mod:`.conventions`)."""
    data = read_safely(filename)
    if isinstance(data, Mapping) and (META_KEY in data or is_backbone_file(data)):
        check_conventions(self.model, filename)
    return detectron2_file(filename, data)


# Detectron2's own checkpointer (DefaultTrainer, DefaultPredictor, a user's DetectionCheckpointer) reads through the
# safe readers once us3l.d2 is imported: a downloaded checkpoint never runs code, whatever
# TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD says (Detectron2 has no registry for readers; mmengine's twin is
# us3l.mmdet.safe_checkpoints).
DetectionCheckpointer._load_file = _stock_load_file


class US3LCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` that slices a full-width US3L backbone to the model and fails loudly."""

    def __init__(self, model, save_dir: str = "", *, cfg=None, **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.bn_stats = bn_stats_policy(cfg) if cfg is not None else "calibrated"
        self.last_report: LoadReport | None = None

    # -- writing / finding -----------------------------------------------------------------------------------
    def save(self, name: str, **kwargs) -> None:
        """fvcore's ``save``, written atomically (temporary file + rename): a kill or a full disk during a save
        leaves the previous checkpoints and ``last_checkpoint`` as they were."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict(), **{k: v.state_dict() for k, v in self.checkpointables.items()},
                **kwargs}
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", path)
        atomic_save(data, path)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        tmp = os.path.join(self.save_dir, ".last_checkpoint.tmp")
        with open(tmp, "w") as f:
            f.write(last_filename_basename)
        os.replace(tmp, os.path.join(self.save_dir, "last_checkpoint"))

    def get_checkpoint_file(self) -> str:
        """The checkpoint ``--resume`` continues from: the one ``last_checkpoint`` names, or, if that one does not
        read (a save cut short by a full disk or a kill, before saves were atomic), the newest intact one."""
        path = super().get_checkpoint_file()
        problem = resume_files.why_unreadable(path) if path else None
        if problem is None:
            return path
        intact = newest_intact(self.save_dir, skip=os.path.basename(path))
        if intact is None:
            raise CheckpointError(f"--resume: {path} (named in last_checkpoint) is {problem} and no intact "
                                  "checkpoint is beside it: rerun without --resume to start again")
        logger.warning("--resume: %s (named in last_checkpoint) is %s; resuming from %s, the newest intact "
                       "checkpoint beside it", path, problem, intact)
        return os.path.join(self.save_dir, intact)

    # -- reading -------------------------------------------------------------------------------------------
    def _load_file(self, filename: str):
        """Every file through :mod:`us3l.checkpoint.safe_load` (Detectron2's own reader uses ``pickle.load`` and a
        bare ``torch.load``): a file that would run code is refused with a :class:`CheckpointError`."""
        self._dropped = []
        obj = read_safely(filename)
        if isinstance(obj, Mapping) and (META_KEY in obj or is_backbone_file(obj)):
            check_conventions(self.model, filename)  # before any tensor is placed
        if filename.endswith(".pkl") or not is_backbone_file(obj):
            return detectron2_file(filename, obj)
        report = LoadReport()
        state, meta = extract_backbone(obj, source=filename, report=report)
        self._dropped = report.dropped
        return backbone_to_d2(state, meta, source=filename)

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
            raise CheckpointError("this is a US3L backbone but the model has no US3L backbone: set "
                                  "MODEL.BACKBONE.NAME to build_us3l_resnet_fpn_backbone or build_us3l_resnet_backbone")
        if not isinstance(meta, dict) or "arch" not in meta:
            raise CheckpointError(f"the {META_KEY} metadata of this .pkl has no 'arch' entry: {meta!r}")
        width = trunk.us3l_width
        bad = [k for k in state if not _TRUNK.match(k)]
        if bad:
            raise CheckpointError(f"the US3L .pkl holds keys that are not ResNet trunk keys, e.g. {bad[:5]}")
        prefix = self._trunk_prefix(model_state)
        placed = {(k[len("roi_heads."):] if k.startswith("roi_heads.res5.") else k[len(prefix):]): k
                  for k in trunk_keys(model_state, prefix)}
        if self.bn_stats == "reset":
            self._check_norms_trainable(set(placed.values()))
        what = (f"the US3L {meta['arch']} backbone ({meta.get('source') or 'pkl'}) at width {width}, "
                f"BN statistics '{self.bn_stats}'")
        fitted, report = fit_backbone(state, meta, {k: model_state[v] for k, v in placed.items()}, width=width,
                                      bn_stats=self.bn_stats, depth=trunk.us3l_depth,
                                      context=f"MODEL.US3L.WIDTH_MULT={width}",
                                      model=f"resnet{trunk.us3l_depth} (MODEL.RESNETS.DEPTH={trunk.us3l_depth})",
                                      report=LoadReport(dropped=list(getattr(self, "_dropped", []))))
        for part in ("loaded", "sliced", "missing"):  # the report names the model's keys
            setattr(report, part, [placed.get(k, k) for k in getattr(report, part)])
        self._report(report, what)
        return {placed[k]: v for k, v in fitted.items()}

    def _check_norms_trainable(self, names: set[str]) -> None:
        """``BN_STATS reset`` starts from mean 0 / var 1 and relies on training to re-estimate: frozen norms never
        would."""
        frozen = [n for n, m in self.model.named_modules()
                  if isinstance(m, FrozenBatchNorm2d) and f"{n}.weight" in names]
        if frozen:
            raise CheckpointError(
                f"MODEL.US3L.BN_STATS reset re-estimates BN statistics while fine-tuning, but {len(frozen)} norm "
                f"layers are frozen (e.g. {frozen[0]}; FrozenBN or MODEL.BACKBONE.FREEZE_AT) and would keep mean 0 "
                "/ var 1: use MODEL.RESNETS.NORM BN or SyncBN with MODEL.BACKBONE.FREEZE_AT 0, or calibrate the "
                "width (tools/calibrate_bn.py) and keep BN_STATS calibrated")

    def _trunk_prefix(self, model_state) -> str:
        stems = [k[: -len("stem.conv1.weight")] for k in model_state if k.endswith("stem.conv1.weight")]
        if len(stems) != 1:
            raise CheckpointError(f"cannot locate the ResNet trunk in the model (stems found: {stems})")
        return stems[0]


def newest_intact(output_dir: str, skip: str = "") -> str | None:
    """The newest ``model_*.pth`` (``model_final.pth`` first) in ``output_dir`` that reads, other than ``skip``."""
    path = resume_files.newest_intact(output_dir, ["model_*.pth"], skip=os.path.join(output_dir, skip) if skip else "",
                                      order=lambda p: (os.path.basename(p) == "model_final.pth", os.path.basename(p)))
    return os.path.basename(path) if path else None


def check_resumable(output_dir: str) -> None:
    """Before anything is written: ``--resume`` has a checkpoint to continue from. The one ``last_checkpoint`` names,
    or, when that one is damaged (a save cut short), the newest intact one beside it, which
    :meth:`US3LCheckpointer.get_checkpoint_file` then takes (saying so); with neither, an error (Detectron2 would
    rewrite config.yaml and the log, then fail in the load)."""
    last = os.path.join(output_dir, "last_checkpoint")
    if not os.path.isfile(last):
        return  # nothing to resume: training starts from MODEL.WEIGHTS, as in Detectron2
    with open(last) as f:
        name = f.read().strip()
    problem = resume_files.why_unreadable(os.path.join(output_dir, name))
    if problem is None or newest_intact(output_dir, skip=name):
        return
    raise CheckpointError(f"--resume: {os.path.join(output_dir, name)} (named in last_checkpoint) is {problem} and no "
                          "intact checkpoint is beside it: rerun without --resume to start again; nothing was written")
