#!/usr/bin/env python
"""Detectron2 LazyConfig training / evaluation of the slimmable detector (twin of Detectron2's
tools/lazyconfig_train_net.py): ``python lazy_train_net.py --config-file lazy_configs/X.py [--eval-only]
[--resume] [--num-gpus N] key=value ...``. See :mod:`us3l.d2.lazy`."""
from us3l.cli import run_tool
from us3l.d2.lazy import run

if __name__ == "__main__":
    raise SystemExit(run_tool(run))
