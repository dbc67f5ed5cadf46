"""The main job as a library: stage runner, commands, per-run results table, seed summary, live logs.

The command lines (``tools/run_main.py``, ``tools/results_table.py``) are thin wrappers over these modules.
Imports neither Detectron2 nor MMDetection: every framework step runs in its own process.
"""
