"""The main job with MMDetection (``tools/run_main.py --quick --mmdet``), run as a user runs it.

Its slimmable recipe was broken three ways while no test ran it (classes set on an absent validation loader,
the FPN's input channels, the evaluation given a folder): this runs the whole chain once, in its own file so
that pytest-xdist runs it beside the Detectron2 job.
"""
import json
import math
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.timeout(900)
def test_main_job_quick_mmdet(tmp_path):
    out = tmp_path / "main"
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "run_main.py"), "--quick", "--mmdet",
                           "--output", str(out)], cwd=str(tmp_path), env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    doc = json.loads((out / "results.json").read_text())
    assert doc["meta"]["framework"] == "mmdet" and doc["meta"]["recipe"] == "slimmable"
    rows = {(r["init"], r["width"]): r for r in doc["rows"]}
    assert sorted(rows) == [("random", 0.5), ("random", 1.0), ("us3l", 0.5), ("us3l", 1.0)]
    for r in rows.values():
        assert r["seeds"] == [0, 1]
        for key in ("box_AP_mean", "box_AP_std", "mask_AP_mean", "detector_gflops", "backbone_gflops"):
            assert isinstance(r[key], (int, float)) and math.isfinite(r[key]), (key, r)
        assert 0.0 <= r["box_AP_mean"] <= 100.0
    for init in ("us3l", "random"):  # the whole detector is slimmed: its cost falls with the width
        assert rows[(init, 0.5)]["detector_gflops"] < 0.5 * rows[(init, 1.0)]["detector_gflops"]
    for seed in (0, 1):  # ONE checkpoint per (init, seed), evaluated at both widths
        assert (out / "us3l" / f"seed{seed}" / "results.json").is_file()
    assert (out / "ap_vs_gflops.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
