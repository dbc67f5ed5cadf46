"""What the four converters of ``tools/`` share: an ``SRC DST`` command line and one way to report the outcome.

``tools/convert_pretrain_to_{d2,mmdet}.py`` write a backbone file (:func:`convert_backbone`);
``tools/convert_d2_to_mmdet.py`` and ``tools/convert_mmdet_to_d2.py`` convert whole detectors between the two
frameworks (:func:`convert_detector`, :mod:`us3l.checkpoint.frameworks`); with ``--config SRC_CONFIG`` they also
write the target framework's config for the converted weights (:func:`target_config`, through the neutral
:class:`us3l.detection.spec.DetectorSpec`). A file or config this package refuses is one ``error:`` line on stderr
and exit code 2 (:mod:`us3l.cli`), with nothing written. Weights alone need no framework (converting works on a
machine that has neither); ``--config`` imports both plugins, as reading one framework's config and writing the
other's needs them.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from .checkpoint.report import CheckpointError, LoadReport
from .cli import BAD_INPUT, BAD_INPUT_ERRORS, error_line
from .detection.backends import export_config_path
from .output_paths import check_output_file


def converter_parser(description: str, src_help: str, dst_help: str) -> argparse.ArgumentParser:
    """``TOOL SRC DST [options]``."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help=src_help)
    p.add_argument("dst", help=dst_help)
    return p


def backbone_converter_parser(description: str, src_help: str, dst_help: str) -> argparse.ArgumentParser:
    """``SRC DST [--src-width W]``: a US3L backbone (ours or the reference code's) to a framework's file."""
    p = converter_parser(description, src_help, dst_help)
    p.add_argument("--src-width", type=float, default=None,
                   help="width of a reference calibration / fixed-width file whose name does not say it")
    return p


def detector_converter_parser(description: str, src_help: str, dst_help: str, target: str) -> argparse.ArgumentParser:
    """``SRC DST [--num-ratios N] [--skip-unmapped-heads] [--quiet]``: a whole detector to the ``target`` framework."""
    p = converter_parser(description, src_help, dst_help)
    p.add_argument("--num-ratios", type=int, default=3, help="anchor aspect ratios per size (default 3)")
    p.add_argument("--skip-unmapped-heads", action="store_true",
                   help=f"leave out head parameters that have no {target} counterpart (listed)")
    p.add_argument("--quiet", action="store_true", help="do not list every renamed key")
    p.add_argument("--config", metavar="SRC_CONFIG", default=None,
                   help=f"the source detector's config: also write the {target} config that builds the converted "
                        "detector (DST with the target's config suffix)")
    return p


def run_conversion(convert: Callable[[], object], describe: Callable[[object], str]) -> int:
    """``convert()`` and print ``describe(result)``: 0; a refused input: one ``error:`` line on stderr, 2."""
    try:
        result = convert()
    except (CheckpointError, *BAD_INPUT_ERRORS) as e:
        print(error_line(e), file=sys.stderr)
        return BAD_INPUT
    print(describe(result))
    return 0


def convert_backbone(convert: Callable, args: argparse.Namespace, describe: Callable[[object], str]) -> int:
    """``convert(SRC, DST, width=--src-width, report=...)`` (:func:`us3l.checkpoint.d2_format.convert_backbone_to_d2`,
    :func:`us3l.checkpoint.mmdet_format.convert_backbone_to_mmdet`); prints the keys left out on purpose (projector, EMA
    encoder, predictors; not with ``--quiet``), then ``describe(result)``."""
    report = LoadReport()

    def _describe(result) -> str:
        dropped = [] if getattr(args, "quiet", False) else ["\n".join(f"  dropped: {k}" for k in report.dropped)]
        return "\n".join([*dropped, describe(result)])

    def _convert():
        check_output_file(args.dst, "DST", inputs=[args.src])  # before SRC is read
        return convert(args.src, args.dst, width=args.src_width, report=report)

    return run_conversion(_convert, _describe)


FRAMEWORK_NAMES = {"mmdet": "MMDetection", "d2": "Detectron2"}


def read_spec(config: str, framework: str):
    """The :class:`DetectorSpec` of a source config (``framework``: the SOURCE framework)."""
    if framework == "d2":
        from . import d2  # noqa: F401  (registers the project's backbones, heads and datasets)
        from .d2.config import load_config
        from .d2.spec import spec_from_cfg

        return spec_from_cfg(load_config(config))
    from mmengine.config import Config

    from . import mmdet  # noqa: F401
    from .mmdet.spec import spec_from_config

    return spec_from_config(Config.fromfile(config))


def target_config(spec, framework: str, weights: str) -> Callable[[str], None]:
    """A callable that writes the ``framework`` (TARGET) config of ``spec``, loading ``weights``, to a path and
    loads the weights into the detector it builds (:func:`load_in_target`)."""
    if framework == "mmdet":
        from .mmdet.spec import config_from_spec

        cfg = config_from_spec(spec, load_from=weights)
        dump = cfg.dump
    else:
        from .d2.spec import cfg_from_spec

        cfg = cfg_from_spec(spec, weights=weights)

        def dump(path: str) -> None:
            with open(path, "w") as f:
                f.write(cfg.dump())

    def write(path: str) -> None:
        dump(path)
        load_in_target(framework, path, weights, spec.slimmable)
    return write


def load_in_target(framework: str, config: str, weights: str, slimmable: bool) -> None:
    """Build the detector of the written ``config`` with the TARGET framework and load ``weights`` into it with
    the loader a user's tools use (every key and shape checked): a file that loader refuses is never reported as
    converted."""
    from .checkpoint.model_io import load_state_dict_checked

    if framework == "d2":
        from detectron2.modeling import build_model

        from .checkpoint.d2_format import read_d2_checkpoint
        from .d2.config import load_config
        from .d2.detector_tools import load_slimmable_detector

        if slimmable:
            load_slimmable_detector(config, weights)
            return
        model = build_model(load_config(config, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""]))
        state = {k: v for k, v in read_d2_checkpoint(weights)[0].items() if "cell_anchors" not in k}
    else:
        from mmdet.registry import MODELS
        from mmengine.config import Config
        from mmengine.registry import init_default_scope

        from .checkpoint.mmdet_format import read_mmdet_checkpoint
        from .mmdet.slimmable_eval import load_slimmable_detector

        if slimmable:
            load_slimmable_detector(config, weights)
            return
        cfg = Config.fromfile(config)
        init_default_scope(cfg.get("default_scope", "mmdet"))
        model = MODELS.build(cfg.model)
        state = read_mmdet_checkpoint(weights)[0]
    load_state_dict_checked(model, state, f"loading the converted {weights} into the detector of {config}")


def spec_check(spec, source: str):
    """``check(state, meta)`` for :mod:`us3l.checkpoint.frameworks`: the source config must describe the checkpoint
    it is read for (classes, FPN width, slimmable or not), checked on the one read of the source."""
    from .checkpoint.frameworks import is_slimmable_mmdet
    from .checkpoint.keymaps import detect_d2_layout
    from .detection.spec import SpecError, check_against_checkpoint

    def check(state, meta) -> None:
        check_against_checkpoint(spec, state)
        if source == "d2":
            slimmable = detect_d2_layout(state) == "slimmable"
        else:  # an MMDetection slimmable file before calibration has a plain one's names: only "slimmable" shows
            slimmable = is_slimmable_mmdet(state, meta) or spec.slimmable
        if slimmable != spec.slimmable:
            raise SpecError(f"the checkpoint is {'a slimmable' if slimmable else 'a plain'} detector but --config "
                            f"describes {'a slimmable' if spec.slimmable else 'a plain'} one")
    return check


def _prepare_config(args: argparse.Namespace, source: str, target: str, options: dict):
    """Read the source config (before anything is written); returns the target config's writer and sets the
    converter's ``check`` and layout."""
    try:
        spec = read_spec(args.config, source)
        options["check"] = spec_check(spec, source)
        if target == "d2" and spec.slimmable:
            options["layout"] = "slimmable"
        return target_config(spec, target, os.path.abspath(args.dst))
    except ImportError as e:
        raise CheckpointError(f"--config reads the source framework's config and writes the target's: both "
                              f"Detectron2 and MMDetection must be installed ({e})") from None


def convert_detector(convert: Callable, args: argparse.Namespace, source: str, **options) -> int:
    """``convert(SRC, DST, num_ratios=, skip_unmapped_heads=, **options)`` (:mod:`us3l.checkpoint.frameworks`);
    prints what was converted (every renamed key unless ``--quiet``) and the files written. With ``--config``
    the target config is prepared before anything is written and written after the weights were checked."""
    target = "mmdet" if source == "d2" else "d2"
    config_path = export_config_path(args.dst, target) if args.config else None
    write_config = None
    try:  # every output checked before SRC or --config is read
        check_output_file(args.dst, "DST", inputs=[args.src, args.config])
        if config_path is not None:
            if os.path.abspath(config_path) == os.path.abspath(args.dst):
                raise ValueError(f"DST {args.dst} would be overwritten by its own config: give DST a weights suffix")
            check_output_file(config_path, "the config written beside DST", inputs=[args.src, args.config])
        if args.config:
            write_config = _prepare_config(args, source, target, options)
        result = convert(args.src, args.dst, num_ratios=args.num_ratios,
                         skip_unmapped_heads=args.skip_unmapped_heads, **options)
        if write_config is not None:
            try:
                write_config(config_path)
            except BaseException:
                for path in (args.dst, config_path):
                    if os.path.exists(path):
                        os.remove(path)
                raise
    except (CheckpointError, *BAD_INPUT_ERRORS) as e:
        print(error_line(e), file=sys.stderr)
        return BAD_INPUT
    written = f"saved {args.dst}" + (f"\nwrote {FRAMEWORK_NAMES[target]} config {config_path}" if config_path else "")
    print(f"{result.summary(verbose=not args.quiet)}\n{written}")
    return 0
