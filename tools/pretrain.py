#!/usr/bin/env python
"""Self-supervised pre-training of a universally slimmable backbone (US3L or a Table-1 baseline).

  python tools/pretrain.py --config configs/us3l_tiny_cpu.yaml --output-dir runs/tiny [--resume] [key=value ...]
  python tools/pretrain.py --config configs/us3l_cifar100_r18.yaml --output-dir runs/c100 --init-from ref/ckpt.pth.tar
  torchrun --nproc_per_node 8 tools/pretrain.py --config configs/us3l_imagenet_r50.yaml --output-dir runs/r50

Overrides are dotted config keys (``train.iterations=20 data.root=/data/imagenet``); unknown keys are errors.
Writes ``last.pth`` (every checkpoint), ``ckpt_XXXXXXXX.pth`` (periodic, keep-last-N), ``final.pth``,
``summary.json``, ``log.txt`` and TensorBoard scalars under ``tb/``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from us3l.checkpoint.report import CheckpointError  # noqa: E402
from us3l.engine import distributed as du  # noqa: E402
from us3l.engine.config import ConfigError, load_config  # noqa: E402
from us3l.engine.trainer import pretrain  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="YAML config (configs/*.yaml)")
    ap.add_argument("--output-dir", required=True)
    ap.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/last.pth if it exists")
    ap.add_argument("--init-from", metavar="PATH", help="start from this checkpoint's backbone and heads (US3L "
                    "reference pre-training checkpoint or us3l.pretrain/1); same as model.init_from=PATH")
    ap.add_argument("overrides", nargs="*", help="section.key=value")
    args = ap.parse_args(argv)
    try:
        init = [f"model.init_from={json.dumps(args.init_from)}"] if args.init_from else []  # quoted YAML scalar
        cfg = load_config(args.config, list(args.overrides) + init)
        summary = pretrain(cfg, args.output_dir, args.resume)
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        du.cleanup()
    if summary["stopped"]:
        return 3 if summary["stopped"] == "signal" else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
