"""``MODEL.US3L`` config keys: the one place the detector's width and BN-statistics choice are declared."""
from __future__ import annotations

import difflib
import re

from detectron2.config import CfgNode as CN

from ..checkpoint import BN_STATS_POLICIES
from ..ops import DEFAULT_WIDTH_RANGE, check_width


def add_us3l_config(cfg: CN) -> CN:
    """Add ``MODEL.US3L`` to a Detectron2 config (idempotent).

    * ``WIDTH_MULT``: the width the detector is built and fine-tuned at.
    * ``WIDTH_RANGE``: widths the backbone accepts; the pretrained checkpoint's own range is checked at load.
    * ``BN_STATS``: which BN statistics the pretrained backbone starts from, ``"calibrated"`` (those
      calibrated for ``WIDTH_MULT``) or ``"reset"`` (mean 0 / var 1, re-estimated while fine-tuning).

    Slimmable detectors (``MODEL.BACKBONE.NAME build_us3l_slimmable_resnet_fpn_backbone``, see
    :mod:`us3l.d2.slimmable_backbone`): ``WIDTH_MULT`` is then the width it is evaluated at, and

    * ``SLIM_NECK_HEADS``: FPN, RPN head and ROI heads slim with the width (False: full width, only the
      backbone slims);
    * ``SANDWICH.{ENABLED, NUM_RANDOM, DISTILL, DISTILL_WEIGHT}``: fine-tune max, min and ``NUM_RANDOM``
      random widths per iteration (one optimizer step), optionally distilling the max width into the others;
      widths drawn from ``SEED`` and the iteration (:mod:`us3l.detection.sandwich`);
    * ``CALIBRATION.{WIDTHS, NUM_BATCHES}``: widths whose BN statistics are calibrated on training images
      after training (before the final evaluation and ``model_final.pth``; empty = ``WIDTH_MULT``).

    And ``TEST.IMS_PER_BATCH`` (default 1): images per inference batch in evaluation
    (:func:`us3l.d2.evaluation.build_test_loader`); ``INPUT.RESIZE_BACKEND`` ("pillow", Detectron2's, or "cv2",
    mmcv's default): the library of the test-time resize (:mod:`us3l.d2.resize`).
    """
    if "US3L" not in cfg.MODEL:
        cfg.MODEL.US3L = CN()
        cfg.MODEL.US3L.WIDTH_MULT = 1.0
        cfg.MODEL.US3L.WIDTH_RANGE = list(DEFAULT_WIDTH_RANGE)
        cfg.MODEL.US3L.BN_STATS = "calibrated"
    if "SANDWICH" not in cfg.MODEL.US3L:
        cfg.MODEL.US3L.SLIM_NECK_HEADS = True
        cfg.MODEL.US3L.SANDWICH = CN()
        cfg.MODEL.US3L.SANDWICH.ENABLED = False
        cfg.MODEL.US3L.SANDWICH.NUM_RANDOM = 2
        cfg.MODEL.US3L.SANDWICH.DISTILL = False
        cfg.MODEL.US3L.SANDWICH.DISTILL_WEIGHT = 1.0
        cfg.MODEL.US3L.CALIBRATION = CN()
        cfg.MODEL.US3L.CALIBRATION.WIDTHS = []
        cfg.MODEL.US3L.CALIBRATION.NUM_BATCHES = 200
    if "IMS_PER_BATCH" not in cfg.TEST:
        cfg.TEST.IMS_PER_BATCH = 1
    if "RESIZE_BACKEND" not in cfg.INPUT:
        cfg.INPUT.RESIZE_BACKEND = "pillow"
    return cfg


def load_config(config_file: str, opts=()) -> CN:
    """Detectron2 defaults + ``MODEL.US3L`` + a YAML file (``_BASE_`` inherited) + ``KEY VALUE`` overrides.

    A key Detectron2 does not know is a ``ValueError`` naming it and the closest valid key (yacs raises a bare
    ``KeyError`` / ``AssertionError``, which the tools would print as a traceback)."""
    from detectron2.config import get_cfg

    cfg = get_cfg()
    add_us3l_config(cfg)
    for source, merge in ((config_file, lambda: cfg.merge_from_file(config_file)),
                          ("the command-line overrides", lambda: cfg.merge_from_list(list(opts)))):
        try:
            merge()
        except (KeyError, AssertionError) as e:
            raise _config_key_error(cfg, str(e).strip("'\""), source) from None
    return cfg


def _config_key_error(cfg: CN, message: str, source: str) -> ValueError:
    m = re.search(r"Non-existent (?:config )?key: (\S+)", message)
    if m is None:  # a renamed key, an odd number of overrides...: yacs' own words
        return ValueError(f"{source}: {message}")
    key = m.group(1)
    close = difflib.get_close_matches(key, _dotted_keys(cfg), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else ""
    return ValueError(f"{source}: {key} is not a Detectron2 / US3L config key{hint}")


def _dotted_keys(node: CN, prefix: str = "") -> list[str]:
    out = []
    for k, v in node.items():
        out += _dotted_keys(v, f"{prefix}{k}.") if isinstance(v, CN) else [f"{prefix}{k}"]
    return out


def us3l_width(cfg: CN) -> float:
    """The configured width, validated against ``MODEL.US3L.WIDTH_RANGE`` (canonical, 3 decimals)."""
    if "US3L" not in cfg.MODEL:
        raise KeyError("the config has no MODEL.US3L section: call us3l.d2.add_us3l_config(cfg) before "
                       "merge_from_file")
    lo, hi = (float(v) for v in cfg.MODEL.US3L.WIDTH_RANGE)
    try:
        return check_width(cfg.MODEL.US3L.WIDTH_MULT, (lo, hi))
    except ValueError as e:
        raise ValueError(f"MODEL.US3L.WIDTH_MULT: {e} (MODEL.US3L.WIDTH_RANGE)") from None


def calibration_widths_checked(cfg: CN) -> list[float]:
    """``MODEL.US3L.CALIBRATION.WIDTHS``, each validated against ``MODEL.US3L.WIDTH_RANGE`` (at set-up, so a bad
    width is refused before training, not by the calibration after it)."""
    lo, hi = (float(v) for v in cfg.MODEL.US3L.WIDTH_RANGE)
    out = []
    for w in cfg.MODEL.US3L.CALIBRATION.WIDTHS:
        try:
            out.append(check_width(w, (lo, hi)))
        except (TypeError, ValueError) as e:
            raise ValueError(f"MODEL.US3L.CALIBRATION.WIDTHS: {e} (MODEL.US3L.WIDTH_RANGE)") from None
    return out


def bn_stats_policy(cfg: CN) -> str:
    policy = cfg.MODEL.US3L.BN_STATS
    if policy not in BN_STATS_POLICIES:
        raise ValueError(f"MODEL.US3L.BN_STATS must be one of {BN_STATS_POLICIES}, got {policy!r}")
    return policy
