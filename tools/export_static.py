#!/usr/bin/env python
"""Export a fixed-width plain PyTorch backbone (and optionally ONNX) from one slimmable checkpoint.

    python tools/export_static.py SRC DST.pth --width 0.5 [--onnx DST.onnx --image-size 224]

SRC is any backbone checkpoint us3l reads (``us3l.backbone/1``, pre-training, the reference code's); it must
hold BN statistics calibrated for the width (tools/calibrate_bn.py).
"""
import argparse

from us3l.cli import exit_with
from us3l.export import export_checkpoint, write_onnx
from us3l.output_paths import check_output_file


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src")
    p.add_argument("dst", help="plain state dict (torchvision names) at the width")
    p.add_argument("--width", type=float, required=True)
    p.add_argument("--onnx", help="also write an ONNX graph here")
    p.add_argument("--image-size", type=int, default=224)
    args = p.parse_args(argv)
    check_output_file(args.dst, "DST", inputs=[args.src])
    if args.onnx:
        check_output_file(args.onnx, "--onnx", inputs=[args.src, args.dst])
    static, meta = export_checkpoint(args.src, args.dst, args.width)  # bad input: exit 2 through exit_with
    n = sum(p.numel() for p in static.parameters()) / 1e6
    print(f"exported {meta['arch']} at width {args.width}: {n:.2f}M parameters -> {args.dst}")
    if args.onnx:
        write_onnx(static, args.onnx, args.image_size)
        print(f"ONNX graph -> {args.onnx}")
    return 0


if __name__ == "__main__":
    exit_with(main)
