#!/usr/bin/env python
"""Re-render (or merge) per-width ``results.json`` files as CSV, markdown and an AP-vs-GFLOPs plot.

    python tools/results_table.py runs/main/us3l/seed0 --out-dir /tmp/table --title "my run"

The logic lives in :mod:`us3l.pipeline.results_table`.
"""
from us3l.cli import exit_with
from us3l.pipeline.results_table import main

if __name__ == "__main__":
    exit_with(main)
