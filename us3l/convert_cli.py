"""What the four converters of ``tools/`` share: an ``SRC DST`` command line and one way to report the outcome.

``tools/convert_pretrain_to_{d2,mmdet}.py`` write a backbone file (:func:`convert_backbone`);
``tools/convert_d2_to_mmdet.py`` and ``tools/convert_mmdet_to_d2.py`` convert whole detectors between the two
frameworks (:func:`convert_detector`, :mod:`us3l.checkpoint.frameworks`). A file this package refuses
(:class:`CheckpointError`) is one ``error:`` line on stderr and exit code 2 (:mod:`us3l.cli`), with nothing
written. No framework is imported here: converting works on a machine that has neither.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from .checkpoint.report import CheckpointError, LoadReport
from .cli import BAD_INPUT, error_line


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
    return p


def run_conversion(convert: Callable[[], object], describe: Callable[[object], str]) -> int:
    """``convert()`` and print ``describe(result)``: 0; a refused input: one ``error:`` line on stderr, 2."""
    try:
        result = convert()
    except CheckpointError as e:
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

    return run_conversion(lambda: convert(args.src, args.dst, width=args.src_width, report=report), _describe)


def convert_detector(convert: Callable, args: argparse.Namespace, **options) -> int:
    """``convert(SRC, DST, num_ratios=, skip_unmapped_heads=, **options)`` (:mod:`us3l.checkpoint.frameworks`);
    prints what was converted (every renamed key unless ``--quiet``) and the file written."""
    return run_conversion(
        lambda: convert(args.src, args.dst, num_ratios=args.num_ratios, skip_unmapped_heads=args.skip_unmapped_heads,
                        **options),
        lambda conv: f"{conv.summary(verbose=not args.quiet)}\nsaved {args.dst}")
