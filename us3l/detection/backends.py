"""Framework backends of the slimmable-detector tools (``tools/export_detector.py``, ``tools/calibrate_detector.py``,
``tools/eval_widths.py``): the tools are thin front ends, each framework implements the same functions.

A backend is a module (``us3l.d2.detector_tools`` for Detectron2, ``us3l.mmdet.detector_tools`` for
MMDetection) with:

``is_slimmable(config, opts) -> bool``
    whether ``config`` (+ overrides) builds a universally slimmable detector.
``export(src, dst, width, config, opts) -> dict``
    write a PLAIN detector at ``width`` to ``dst`` and the config that builds it beside it
    (``dst`` with ``.yaml`` / ``.py``; see :func:`export_config_path`), made only of the framework's plain
    registered components with channel counts from :mod:`us3l.detection.export_rules`. Refuses an uncalibrated
    width (:func:`us3l.detection.require_calibrated`). Returns at least
    ``{"weights", "config", "width", "params_slimmable", "params_plain"}``.
``calibrate(src, dst, config, widths, num_batches, opts) -> dict``
    calibrate BN at ``widths`` on the config's TRAINING images (:func:`us3l.detection.calibrate_detector`)
    and save the checkpoint with the per-width statistics to ``dst``. Returns ``{"weights", "widths": {w: batches}}``.
``evaluate(checkpoint, config, widths, output_dir, opts, calibrate_batches=0, profile=True) -> list[dict]``
    COCO-evaluate ONE slimmable checkpoint at each width (uncalibrated widths refused unless
    ``calibrate_batches > 0``, then calibrated first and the calibrated checkpoint written into ``output_dir``).
    One row per width: ``width, box_AP, mask_AP, box_AP50, mask_AP50`` (0-100, ``None`` when not applicable),
    ``detector_gflops`` (whole detector, fvcore, one test image of the config's test size) and
    ``gflops`` / ``params_m`` (the backbone at that width, :func:`us3l.profiling.profile_width`).
``demo(checkpoint, config, images, widths, opts, score_thresh, runs) -> list[dict]``
    one panel per (image, width): the detections drawn by the framework's own visualizer (``rgb``), ``boxes`` /
    ``scores`` / ``classes`` above ``score_thresh``, ``latency_ms`` and ``gflops`` (``tools/demo.py``).
``export_onnx(weights, config, dst, opts, opset=17) -> dict``
    write the plain detector ``export`` wrote as an ONNX graph with standard operators only (contract:
    :func:`us3l.detection.onnx_graph.check_onnx`); ``{"onnx", "opset", "inputs", "outputs", "mask", ...}``.
``evaluate_onnx(onnx_path, config, opts, threads) -> dict``
    COCO ``box_AP`` / ``mask_AP`` (and AP50) of that graph in onnxruntime on the plain config's test set.
``deployed_latency_ms(weights, config, runtime, threads, runs, opts, onnx_path) -> float``
    median wall time of one test image through the deployed detector in ``torch`` or ``onnxruntime``.

Errors a user can fix are raised as ``ValueError`` / ``FileNotFoundError`` / :class:`us3l.checkpoint.CheckpointError`
/ :class:`us3l.UncalibratedWidthError`; the tools print them as one line and exit with code 2.
"""
from __future__ import annotations

import importlib
import os

from ..frameworks import FRAMEWORKS, get_framework

USER_ERRORS = (ValueError, FileNotFoundError, KeyError)


def framework_of(config: str, framework: str | None = None) -> str:
    """``d2`` for a ``.yaml`` config, ``mmdet`` for a ``.py`` one (or the explicit choice)."""
    if framework:
        return get_framework(framework).name
    for fw in FRAMEWORKS.values():
        if config.endswith(fw.config_suffix):
            return fw.name
    raise ValueError(f"cannot tell the framework of config {config!r}: Detectron2 configs end in .yaml, "
                     "MMDetection configs in .py (or pass --framework)")


def load_backend(framework: str):
    """The backend module of ``framework`` (imports the framework)."""
    return importlib.import_module(get_framework(framework).backend)


def export_config_path(dst: str, framework: str) -> str:
    """Where the exported config goes: DST with the framework's config suffix (``model.pth`` -> ``model.yaml``)."""
    return os.path.splitext(dst)[0] + get_framework(framework).config_suffix
