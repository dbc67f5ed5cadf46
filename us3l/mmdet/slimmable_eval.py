"""The MMDetection backend of ``tools/eval_widths.py`` / ``tools/calibrate_detector.py`` for the slimmable detector.

One checkpoint, any width: build the detector from its config, load the fine-tuned tensors (all-or-nothing),
calibrate BN statistics where asked (an explicit step, :func:`us3l.detection.calibrate_detector`), and run
MMDetection's own ``CocoMetric`` at each width. A width without statistics is refused
(:func:`us3l.detection.require_calibrated`), before any width is evaluated.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from mmengine.config import Config
from mmengine.evaluator import Evaluator
from mmengine.logging import print_log
from mmengine.registry import init_default_scope
from mmengine.runner import Runner

from ..checkpoint.frameworks import read_mmdet_checkpoint, write_mmdet_checkpoint
from ..checkpoint.model_io import load_state_dict_checked
from ..detection import calibrate_detector, require_calibrated
from ..ops.width_state import canonical_width
from ..width import set_width
from .width_config import width_tag


def slimmable_config(config: str | Config, cfg_options: dict | None = None) -> Config:
    cfg = config if isinstance(config, Config) else Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    init_default_scope(cfg.get("default_scope", "mmdet"))
    return cfg


def load_slimmable_detector(config: str | Config, checkpoint: str | None, device: str = "cpu",
                            cfg_options: dict | None = None):
    """``(model, cfg)``: the slimmable detector of ``config`` with every tensor of ``checkpoint`` (strict); like
    ``mmdet.apis.init_detector``, ``model.cfg`` is the config, so ``inference_detector(model, image)`` runs it."""
    from mmdet.registry import MODELS

    from .slimmable_detector import SlimmableTwoStageMixin

    cfg = slimmable_config(config, cfg_options)
    model = MODELS.build(cfg.model)  # (init_cfg is not applied: every tensor comes from the checkpoint)
    if not isinstance(model, SlimmableTwoStageMixin):
        raise ValueError(f"{cfg.filename}: model.type {cfg.model.type!r} is not a slimmable detector "
                         "(SlimmableMaskRCNN / SlimmableFasterRCNN)")
    if checkpoint is not None:
        state, _ = read_mmdet_checkpoint(checkpoint)
        load_state_dict_checked(model, state, f"loading {checkpoint} into {cfg.model.type}")
    model.cfg = cfg
    return model.to(device).eval(), cfg


def data_batches(loader_cfg, batch_size: int | None = None):
    """Batches of a config's data loader (optionally another batch size), e.g. one test image to profile."""
    cfg = dict(loader_cfg)
    if batch_size is not None:
        cfg["batch_size"] = batch_size
    return iter(Runner.build_dataloader(cfg))


class _PreprocessedImages:
    """Re-iterable batches of normalised, padded images from an mmdet data loader (what calibration runs on)."""

    def __init__(self, model, loader: Iterable):
        self.model, self.loader = model, loader

    def __iter__(self):
        for batch in self.loader:
            yield self.model.data_preprocessor(batch, False)["inputs"]


def calibrate_widths(model, cfg: Config, widths: Sequence[float], num_batches: int | None,
                     loader: Iterable | None = None) -> dict[float, int]:
    """Calibrate BN statistics at ``widths`` on training images (``cfg.train_dataloader``); ``{width: batches}``."""
    loader = loader if loader is not None else Runner.build_dataloader(cfg.train_dataloader)
    return calibrate_detector(model, [model.backbone, model.neck], _PreprocessedImages(model, loader), widths,
                              num_batches, log=lambda msg: print_log(msg, logger="current"))


def evaluate_widths(model, cfg: Config, widths: Sequence[float], loader: Iterable | None = None
                    ) -> dict[float, dict[str, float]]:
    """``{width: {'bbox_mAP': ..., 'segm_mAP': ..., ...}}`` with ``cfg.test_evaluator`` on ``cfg.test_dataloader``.

    Every width must be calibrated (checked for all widths before the first is evaluated).
    """
    widths = [canonical_width(w) for w in widths]
    for w in widths:
        require_calibrated(model, w)
    loader = loader if loader is not None else Runner.build_dataloader(cfg.test_dataloader)
    print_log(f"evaluating at widths {widths} on {len(loader.dataset)} images of "
              f"{getattr(loader.dataset, 'ann_file', 'the test set')}", logger="current")
    results = {}
    for w in widths:
        set_width(model, w)
        results[w] = coco_metrics(model, cfg, width_tag(w), loader)
    set_width(model, max(model.sandwich.width_range))
    return results


@torch.no_grad()
def coco_metrics(model, cfg: Config, prefix: str | None = None, loader: Iterable | None = None) -> dict[str, float]:
    """MMDetection's own test loop in one function (any detector): ``cfg.test_evaluator`` on ``cfg.test_dataloader``,
    metric names without their prefix (``bbox_mAP``, ``segm_mAP``...)."""
    loader = loader if loader is not None else Runner.build_dataloader(cfg.test_dataloader)
    model.eval()
    cfgs = cfg.test_evaluator if isinstance(cfg.test_evaluator, (list, tuple)) else [cfg.test_evaluator]
    evaluator = Evaluator([dict(c, prefix=prefix) if prefix else dict(c) for c in cfgs])
    evaluator.dataset_meta = loader.dataset.metainfo
    for batch in loader:
        evaluator.process(data_samples=model.test_step(batch), data_batch=batch)
    metrics = evaluator.evaluate(len(loader.dataset))
    return {k.split("/", 1)[-1]: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


def save_slimmable_detector(model, path: str, meta: dict | None = None) -> None:
    """Plain-tensor checkpoint (``{'state_dict', 'meta'}``, loads with ``weights_only=True``), per-width BN
    statistics included; ``meta['calibrated_widths']`` lists them."""
    from ..bn_calibration import calibrated_widths

    meta = dict(meta or {}, calibrated_widths=calibrated_widths(model))
    write_mmdet_checkpoint(model.state_dict(), meta, path)
