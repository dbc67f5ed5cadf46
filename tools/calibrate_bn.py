#!/usr/bin/env python
"""Calibrate BN statistics of a slimmable backbone for a list of widths and save a ``us3l.backbone/1`` file.

  python tools/calibrate_bn.py SRC DST --widths 1.0 0.75 0.5 0.25 --data-root PATH --num-batches 50

SRC: any backbone checkpoint ``us3l.checkpoint.load_backbone`` reads (ours, the reference code's
pre-training or per-width calibration files, torchvision). Widths SRC already holds stay calibrated.
Calibration uses non-augmented images (resize + center crop) from an ImageFolder (``root/train/<class>/*``)
or a flat folder of images (COCO-style ``root/train/*.png``).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.utils.data as tud

from us3l import calibrate_bn, calibrated_widths
from us3l.checkpoint import CheckpointError, LoadReport
from us3l.checkpoint.model_io import build_model_from_checkpoint, save_model_backbone
from us3l.data import build_dataset, detect_kind, eval_transform
from us3l.output_paths import check_output_file


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--widths", type=float, nargs="+", required=True)
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--split", default="train")
    ap.add_argument("--num-batches", type=int, required=True)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=None, help="default: 32 (CIFAR stem) or 224")
    ap.add_argument("--recipe", choices=("cifar", "imagenet"), default=None,
                    help="normalization/resize recipe (default: cifar for a CIFAR stem, else imagenet)")
    ap.add_argument("--src-width", type=float, default=None,
                    help="width of a reference calibration file whose name does not say it")
    ap.add_argument("--workers", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        check_output_file(args.dst, "DST", inputs=[args.src])  # the source checkpoint is never overwritten
        report = LoadReport()
        model, meta = build_model_from_checkpoint(args.src, width=args.src_width, report=report)
        if report.dropped:
            print(f"left out of {args.src}: {len(report.dropped)} keys that are not the backbone")
            print("\n".join(f"  dropped: {k}" for k in report.dropped))
        print(f"{meta['arch']} from {args.src}: calibrated widths {meta['calibrated_widths'] or 'none'}")
        recipe = args.recipe or ("cifar" if meta["cifar_stem"] else "imagenet")
        size = args.image_size or (32 if meta["cifar_stem"] else 224)
        ds = build_dataset(detect_kind(args.data_root, args.split), args.data_root, args.split,
                           eval_transform(recipe, size))
        g = torch.Generator().manual_seed(0)
        loader = tud.DataLoader(ds, batch_size=args.batch_size, shuffle=True, generator=g,
                                drop_last=len(ds) > args.batch_size, num_workers=args.workers)
        for w in args.widths:
            used = calibrate_bn(model, loader, w, args.num_batches)
            print(f"calibrated width {w} on {used} batches")
        save_model_backbone(model, args.dst, source=os.path.abspath(args.src))
        print(f"wrote {args.dst} (calibrated widths {calibrated_widths(model)})")
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
