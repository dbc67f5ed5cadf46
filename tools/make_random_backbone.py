#!/usr/bin/env python
"""Write a randomly initialised, never trained slimmable backbone (``us3l.backbone/1``): the floor of every
comparison of pre-training methods.

  python tools/make_random_backbone.py DST --arch resnet18 --seed 0

Why a file: the probes (``tools/eval_ssl.py``) and converters take checkpoints, so the floor goes through the
same tools as every pre-trained row. Exit codes: :mod:`us3l.cli`.
"""
import argparse
import os

from us3l.cli import exit_with
from us3l.output_paths import check_output_file


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dst", help="output .pth")
    p.add_argument("--arch", default="resnet18", help="resnet18 | resnet50 | mobilenet_v2")
    p.add_argument("--cifar-stem", action="store_true")
    p.add_argument("--seed", type=int, default=0, help="initialisation seed (several give the floor's spread)")
    args = p.parse_args(argv)
    check_output_file(args.dst, "DST")
    import torch

    from us3l.checkpoint.model_io import save_model_backbone
    from us3l.models import build_us_model

    torch.manual_seed(args.seed)
    model = build_us_model(args.arch, 0, args.cifar_stem)  # an unknown --arch: one error line (exit_with)
    os.makedirs(os.path.dirname(os.path.abspath(args.dst)), exist_ok=True)
    save_model_backbone(model, args.dst, method="random_init", seed=args.seed)
    print(f"random {args.arch} (seed {args.seed}) -> {args.dst}")


if __name__ == "__main__":
    exit_with(main)
