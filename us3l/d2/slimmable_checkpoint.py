"""Loading a universally slimmable Detectron2 detector: a US3L backbone ``.pkl`` placed on its trunk, or a
slimmable detector checkpoint that fits exactly; nothing else."""
from __future__ import annotations

import re

import torch
from detectron2.checkpoint import DetectionCheckpointer

from ..checkpoint import CheckpointError, LoadReport
from ..checkpoint.d2_format import META_KEY
from ..checkpoint.keymaps import d2_to_tv
from ..ops import USBatchNorm2d
from ..ops.norm import WIDTH_STATS_RE
from ..width import slimmable_modules
from .checkpoint import US3LCheckpointer
from .slimmable_backbone import SLIMMABLE_BACKBONE, TRUNK_PREFIX, US3LSlimmableResNet


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
