#!/usr/bin/env python
"""Export a fixed-width plain PyTorch backbone (and optionally ONNX) from one slimmable checkpoint.

    python tools/export_static.py SRC DST.pth --width 0.5 [--onnx DST.onnx --image-size 224]

SRC is any backbone checkpoint us3l reads (pre-training, ``us3l.backbone/1``, reference code); it must
hold BN statistics calibrated for the width (tools/calibrate_bn.py).
"""
import argparse

import torch

import us3l
from us3l.cli import exit_with
from us3l.checkpoint import atomic_save, load_backbone
from us3l.checkpoint.model_io import load_state_dict_checked
from us3l.models import build_us_model


def export(src: str, width: float):
    state, meta = load_backbone(src)
    model = build_us_model(meta["arch"], num_classes=0, cifar_stem=meta["cifar_stem"],
                           width_range=meta["width_range"])
    load_state_dict_checked(model, state, f"loading {src}")
    return us3l.export_static(model, width), meta


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src")
    p.add_argument("dst", help="plain state dict (torchvision names) at the width")
    p.add_argument("--width", type=float, required=True)
    p.add_argument("--onnx", help="also write an ONNX graph here")
    p.add_argument("--image-size", type=int, default=224)
    args = p.parse_args(argv)
    static, meta = export(args.src, args.width)
    atomic_save({"state_dict": static.state_dict(), "meta": {**meta, "width": args.width, "static": True}}, args.dst)
    n = sum(p.numel() for p in static.parameters()) / 1e6
    print(f"exported {meta['arch']} at width {args.width}: {n:.2f}M parameters -> {args.dst}")
    if args.onnx:
        x = torch.randn(1, 3, args.image_size, args.image_size)
        torch.onnx.export(static, (x,), args.onnx, input_names=["images"], output_names=["features"],
                          dynamic_axes={"images": {0: "batch"}}, dynamo=False)
        print(f"ONNX graph -> {args.onnx}")


if __name__ == "__main__":
    exit_with(main)
