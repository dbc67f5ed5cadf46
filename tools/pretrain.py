#!/usr/bin/env python
"""Self-supervised pre-training of a slimmable backbone (also the console script ``us3l-pretrain``).

  python tools/pretrain.py --config configs/us3l_tiny_cpu.yaml --output-dir runs/tiny [--resume] [key=value ...]
  python tools/pretrain.py --config configs/us3l_cifar100_r18.yaml --output-dir runs/c100 --init-from ref/ckpt.pth.tar
  torchrun --nproc_per_node 8 tools/pretrain.py --config configs/us3l_imagenet_r50.yaml --output-dir runs/r50

Options and outputs: ``--help`` (:func:`us3l.cli.pretrain_main`); exit codes: :mod:`us3l.cli`.
"""
import sys

from us3l.cli import pretrain_main as main

if __name__ == "__main__":
    sys.exit(main())
