"""The main job with MMDetection (``tools/run_main.py --quick --mmdet``), run as a user runs it.

Its slimmable recipe was broken three ways while no test ran it (classes set on an absent validation loader,
the FPN's input channels, the evaluation given a folder): this runs the whole chain once, in its own file so
that pytest-xdist runs it beside the Detectron2 job.
"""
import json

import pytest
from main_job_helpers import assert_demo_grid, is_number, run_main

from us3l.pipeline.results_table import load_results


@pytest.mark.timeout(900)
def test_main_job_quick_mmdet(tmp_path):
    """The US3L row only: the random row runs the same MMDetection stages with another backbone file, and the
    rows -> table logic is the framework-free one tests/test_main_job.py checks with both rows."""
    out = tmp_path / "main"
    run_main(out, "--mmdet", "--inits", "us3l", cwd=tmp_path)  # from a folder outside the repository

    doc = json.loads((out / "results.json").read_text())  # the job's summary (us3l.main_results/1)
    assert doc["meta"]["framework"] == "mmdet" and doc["meta"]["recipe"] == "slimmable"
    rows = {(r["init"], r["width"]): r for r in doc["rows"]}
    assert sorted(rows) == [("us3l", 0.5), ("us3l", 1.0)]
    for r in rows.values():
        assert r["seeds"] == [0, 1] and 0.0 <= r["box_AP_mean"] <= 100.0
        assert all(is_number(r[k]) for k in ("box_AP_std", "mask_AP_mean", "backbone_gflops", "detector_gflops"))
    # the whole detector is slimmed: its cost falls with the width
    assert rows[("us3l", 0.5)]["detector_gflops"] < 0.5 * rows[("us3l", 1.0)]["detector_gflops"]
    for seed in (0, 1):  # ONE checkpoint per seed, its table holding both widths
        per_seed = load_results(str(out / "us3l" / f"seed{seed}"))["rows"]
        assert sorted(x["width"] for x in per_seed) == [0.5, 1.0]
        assert len({x["weights"] for x in per_seed}) == 1
    assert (out / "ap_vs_gflops.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert_demo_grid(out, [1.0, 0.5])
