#!/usr/bin/env python
"""The main job: US3L pre-training -> detectors at many widths (seeds, random-init baseline) -> one table.

    python tools/run_main.py                 # Detectron2, outputs in runs/main (see --help)
    python tools/run_main.py --mmdet         # MMDetection
    python tools/run_main.py --quick         # a pipeline check in minutes

The logic lives in :mod:`us3l.pipeline.main_job`; ``bash scripts/main.sh`` installs first, then runs this.
"""
from us3l.cli import exit_with
from us3l.pipeline.main_job import main

if __name__ == "__main__":
    exit_with(main)
