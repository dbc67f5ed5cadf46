#!/usr/bin/env python
"""Export ONE width of a universally slimmable detector as a plain detector, with the config that builds it.

    python tools/export_detector.py SRC DST.pth --width 0.5 --config CFG [--framework d2|mmdet] [--onnx DST.onnx]
        [--opts ...]

SRC: a slimmable detector checkpoint holding BN statistics calibrated for the width
(tools/calibrate_detector.py); an uncalibrated width is refused. DST: the plain detector's weights; beside it
the config (DST with .yaml for Detectron2, .py for MMDetection) made of the framework's plain registered
components only (width-sized backbone, the framework's own FPN and heads with their channel counts written
in), so the deployed model runs no slimmable code. The framework follows the config's suffix.
Detectron2 --opts are KEY VALUE pairs, MMDetection --opts key=value. ``--onnx DST.onnx`` also writes the plain
detector as an ONNX graph that onnxruntime's CPU provider runs with standard operators only (opset >= 16 keeps
RoIAlign's half-pixel shift; masks stay per RoI and are pasted outside the graph, as both frameworks do).
"""
from __future__ import annotations

import argparse
import sys

from us3l.checkpoint import CheckpointError
from us3l.detection.backends import USER_ERRORS, export_config_path, framework_of, load_backend
from us3l.ops import UncalibratedWidthError
from us3l.output_paths import check_output_file


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="slimmable detector checkpoint")
    p.add_argument("dst", help="plain detector weights to write (its config goes beside it)")
    p.add_argument("--width", type=float, required=True)
    p.add_argument("--config", required=True,
                   help="the slimmable detector's config (.yaml Detectron2, .py MMDetection)")
    p.add_argument("--framework", choices=("d2", "mmdet"), default=None, help="default: from the config's suffix")
    p.add_argument("--onnx", metavar="DST.onnx", help="also write the plain detector as ONNX (onnxruntime, CPU)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset for --onnx (>= 16)")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides")
    args = p.parse_args(argv)
    try:
        framework = framework_of(args.config, args.framework)
        # both files it writes, before the framework reads anything (the backend refuses DST == its config)
        check_output_file(args.dst, "DST", inputs=[args.src, args.config])
        check_output_file(export_config_path(args.dst, framework), "the config written beside DST",
                          inputs=[args.src, args.config])
        if args.onnx:
            check_output_file(args.onnx, "--onnx", inputs=[args.src, args.config, args.dst])
        backend = load_backend(framework)
        out = backend.export(args.src, args.dst, args.width, args.config, args.opts)
        if args.onnx:
            onnx = backend.export_onnx(out["weights"], out["config"], args.onnx, opset=args.opset)
    except (CheckpointError, UncalibratedWidthError, *USER_ERRORS) as e:
        print(f"error: {e}".splitlines()[0], file=sys.stderr)
        return 2
    print(f"exported width {out['width']}: {out['params_plain'] / 1e6:.2f}M parameters (slimmable: "
          f"{out['params_slimmable'] / 1e6:.2f}M) -> {out['weights']}, config {out['config']}")
    if args.onnx:
        print(f"ONNX (opset {onnx['opset']}, outputs {', '.join(onnx['outputs'])}) -> {onnx['onnx']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
