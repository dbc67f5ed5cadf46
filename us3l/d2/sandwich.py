"""Sandwich fine-tuning of a slimmable Detectron2 detector inside Detectron2's own trainer.

:class:`SandwichTrainer` is a ``SimpleTrainer`` whose ``run_step`` trains every width of the sandwich
(:func:`us3l.detection.sample_widths`) on the same batch: supervised losses at each width, optional inplace
distillation (max width's RPN objectness and box classification), gradients accumulated (DDP all-reduces
once per iteration, under ``no_sync`` before the last width), ONE optimizer step. With
``SOLVER.AMP.ENABLED`` it autocasts (CUDA: float16 with a ``GradScaler``; CPU: bfloat16, no scaler).

:class:`SlimmableDetectorTrainer` is the project's ``US3LTrainer`` (``DefaultTrainer``: launcher, DDP,
checkpointing, resume, evaluation hooks) with that step, the slimmable checkpointer, and
:class:`WidthCalibrationHook` in place of PreciseBN: before the final evaluation (and each periodic one) it
calibrates BN at ``MODEL.US3L.CALIBRATION.WIDTHS`` on training images, so ``model_final.pth`` carries
per-width statistics. Evaluation refuses a width without statistics (:mod:`us3l.detection.calibration`).
"""
from __future__ import annotations

import contextlib
import logging
import time

import torch
from detectron2.engine import SimpleTrainer, hooks
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

from ..detection import (
    SandwichConfig,
    box_cls_distill_loss,
    calibrate_detector,
    objectness_distill_loss,
    resolve_seed,
    sample_widths,
    sandwich_step,
    width_tags,
)
from ..width import get_width, set_width
from .config import calibration_widths_checked, us3l_width
from .evaluation import prepare_for_width, unwrap
from .resumable import is_resumable, mixed_seed, restart
from .slimmable_backbone import is_slimmable_detector_cfg
from .slimmable_checkpoint import SlimmableDetectorCheckpointer
from .trainer import US3LTrainer


def sandwich_config(cfg) -> SandwichConfig:
    """``MODEL.US3L.SANDWICH`` as a :class:`SandwichConfig` (seed from ``SEED``; random seeds agreed across ranks)."""
    s = cfg.MODEL.US3L.SANDWICH
    return SandwichConfig(width_range=tuple(cfg.MODEL.US3L.WIDTH_RANGE), num_random=s.NUM_RANDOM, distill=s.DISTILL,
                          distill_weight=s.DISTILL_WEIGHT, seed=resolve_seed(cfg.SEED))


class _Capture:
    """Forward hooks that keep what distillation needs from one forward of a ``GeneralizedRCNN``."""

    def __init__(self, net):
        self.net, self.out, self._handles = net, {}, []

    def __enter__(self):
        def keep(key):
            def hook(_module, _inputs, output):
                self.out[key] = output
            return hook

        targets = {"features": self.net.backbone, "rpn": self.net.proposal_generator.rpn_head,
                   "roi": self.net.roi_heads, "box": self.net.roi_heads.box_predictor}
        self._handles = [m.register_forward_hook(keep(k)) for k, m in targets.items()]
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()


def _distill_losses(net, student: dict, teacher: dict, weight: float) -> dict[str, torch.Tensor]:
    """Student (this width) vs teacher (max width): objectness per anchor; box classes on the teacher's regions."""
    rh = net.roi_heads
    feats = [student["features"][f] for f in rh.box_in_features]
    x = rh.box_pooler(feats, [p.proposal_boxes for p in teacher["proposals"]])
    scores, _ = rh.box_predictor(rh.box_head(x))
    return {"loss_distill_rpn": weight * objectness_distill_loss(student["rpn"][0], teacher["rpn"]),
            "loss_distill_cls": weight * box_cls_distill_loss(scores, teacher["scores"])}


class SandwichTrainer(SimpleTrainer):
    """``SimpleTrainer`` whose step trains the sandwich of widths and makes one optimizer step."""

    def __init__(self, model, data_loader, optimizer, sandwich: SandwichConfig, amp: bool = False):
        super().__init__(model, data_loader, optimizer)
        self.sandwich = sandwich
        device = next(unwrap(model).parameters()).device.type
        self.amp_device = device if amp else None
        self.grad_scaler = torch.amp.GradScaler("cuda") if amp and device == "cuda" else None

    def _autocast(self):
        if self.amp_device is None:
            return contextlib.nullcontext()
        dtype = torch.float16 if self.amp_device == "cuda" else torch.bfloat16
        return torch.autocast(self.amp_device, dtype=dtype)

    def run_step(self):
        assert self.model.training, "[SandwichTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        widths = sample_widths(self.sandwich, self.iter)
        net = unwrap(self.model)
        teacher: dict = {}

        def loss_at_width(width: float, index: int):
            with self._autocast():
                if not self.sandwich.distill or len(widths) == 1:
                    return self.model(data)
                with _Capture(net) as cap:
                    losses = self.model(data)
                if index == 0:
                    teacher.update(rpn=[o.detach() for o in cap.out["rpn"][0]], proposals=cap.out["roi"][0],
                                   scores=cap.out["box"][0].detach())
                    return losses
                losses.update(_distill_losses(net, cap.out, teacher, self.sandwich.distill_weight))
                return losses

        self.optimizer.zero_grad()
        backward = (lambda loss: self.grad_scaler.scale(loss).backward()) if self.grad_scaler else None
        loss_dict = sandwich_step(self.model, widths, loss_at_width,
                                  **({"backward": backward} if backward else {}))
        self._write_metrics(loss_dict, data_time)
        if comm.is_main_process():
            get_event_storage().put_scalars(**{f"width/{t}": w for t, w in zip(width_tags(widths), widths)},
                                            smoothing_hint=False)
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()

    def state_dict(self):
        ret = super().state_dict()
        if self.grad_scaler is not None:
            ret["grad_scaler"] = self.grad_scaler.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if self.grad_scaler is not None and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])


class _PreprocessedImages:
    """Preprocessed image tensors from ONE iterator over an (infinite) Detectron2 training loader.

    Every pass continues that iterator: Detectron2's ``AspectRatioGroupedDataset`` keeps its buckets on the
    object, and a second iterator started after an abandoned one never completes a batch (it loops forever).
    """

    def __init__(self, net, loader):
        self.net, self._batches = net, iter(loader)

    def __iter__(self):
        for batch in self._batches:
            yield self.net.preprocess_image(batch).tensor


def calibrate_d2_detector(model, loader, widths, num_batches: int) -> dict[float, int]:
    """Calibrate the BN statistics of a slimmable Detectron2 detector at ``widths`` on ``loader``'s images.

    ``loader``: a Detectron2 training loader (or an iterator over it, kept across calls).
    """
    net = unwrap(model)
    with torch.no_grad():
        return calibrate_detector(net, net.backbone, _PreprocessedImages(net, loader), widths, num_batches,
                                  log=logging.getLogger("detectron2.us3l.sandwich").info)


def calibration_widths(cfg) -> list[float]:
    """``MODEL.US3L.CALIBRATION.WIDTHS`` plus ``WIDTH_MULT`` (the width the training-time evaluation runs at)."""
    return sorted(set(calibration_widths_checked(cfg)) | {us3l_width(cfg)}, reverse=True)


class WidthCalibrationHook(hooks.HookBase):
    """Calibrates BN at the configured widths before each evaluation and at the end of training.

    Takes PreciseBN's place (and its period): Detectron2's PreciseBN would update one set of running
    statistics, which a slimmable BN does not have.
    """

    def __init__(self, period: int, model, data_loader, widths, num_batches: int):
        self._period, self._model, self._data_loader = period, model, data_loader
        # Detectron2's own loader: one iterator for every calibration (see _PreprocessedImages)
        self._loader = None if is_resumable(data_loader) else iter(data_loader)
        self._widths, self._num_batches = list(widths), num_batches

    def after_step(self):
        next_iter = self.trainer.iter + 1
        if next_iter == self.trainer.max_iter or (self._period > 0 and next_iter % self._period == 0):
            loader = self._loader
            if loader is None:  # batches of a stream of (seed, iteration): the same after a resume
                seed = getattr(self.trainer, "data_seed", 0)
                loader = restart(self._data_loader, 0, mixed_seed(seed, "calibration", next_iter))
            used = calibrate_d2_detector(self._model, loader, self._widths, self._num_batches)
            comm.synchronize()
            if comm.is_main_process():
                logging.getLogger("detectron2.us3l.sandwich").info(
                    "calibrated BN statistics at widths %s (%s batches each)", list(used), list(used.values()))


class SlimmableDetectorTrainer(US3LTrainer):
    """``US3LTrainer`` for slimmable detectors: sandwich steps, slimmable checkpointer, per-width calibration."""

    def build_hooks(self):
        cfg = self.cfg
        old = self._trainer
        if cfg.MODEL.US3L.SANDWICH.ENABLED:
            self._trainer = SandwichTrainer(old.model, old.data_loader, old.optimizer, sandwich_config(cfg),
                                            amp=cfg.SOLVER.AMP.ENABLED)
        else:
            set_width(unwrap(old.model), us3l_width(cfg))  # plain fine-tuning at WIDTH_MULT
        del old
        ret = super().build_hooks()  # with this class's checkpointer_class
        ret = [h for h in ret if not isinstance(h, hooks.PreciseBN)]
        if cfg.MODEL.US3L.CALIBRATION.NUM_BATCHES > 0:  # before the checkpointer and the evaluation
            at = next(i for i, h in enumerate(ret) if isinstance(h, hooks.LRScheduler)) + 1
            ret.insert(at, self._calibration_hook())
        return ret

    def _calibration_hook(self):
        cfg = self.cfg.clone()
        cfg.defrost()
        cfg.DATALOADER.NUM_WORKERS = 0
        return WidthCalibrationHook(cfg.TEST.EVAL_PERIOD, self.model, self.build_train_loader(cfg),
                                    calibration_widths(cfg), cfg.MODEL.US3L.CALIBRATION.NUM_BATCHES)

    checkpointer_class = SlimmableDetectorCheckpointer

    @classmethod
    def build_model(cls, cfg):
        model = super().build_model(cfg)
        set_width(model, us3l_width(cfg))  # every slimmable layer, heads included
        return model

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """COCO evaluation at ``MODEL.US3L.WIDTH_MULT``; refuses a width without calibrated BN statistics."""
        net = unwrap(model)
        previous = get_width(net)
        prepare_for_width(net, us3l_width(cfg))
        try:
            return super().test(cfg, model, evaluators)
        finally:
            set_width(net, previous)


def trainer_class(cfg):
    """The trainer a config needs: the slimmable one for a slimmable detector, else ``US3LTrainer``."""
    return SlimmableDetectorTrainer if is_slimmable_detector_cfg(cfg) else US3LTrainer
