"""The main job with MMDetection (``tools/run_main.py --quick --mmdet``), run as a user runs it.

Its slimmable recipe was broken three ways while no test ran it (classes set on an absent validation loader,
the FPN's input channels, the evaluation given a folder): this runs the whole chain once, in its own file so
that pytest-xdist runs it beside the Detectron2 job.
"""
import pytest
from main_job_helpers import quick_summary_rows, run_main

from us3l.pipeline.results_table import load_results


@pytest.mark.timeout(900)
def test_main_job_quick_mmdet(tmp_path):
    out = tmp_path / "main"
    run_main(out, "--mmdet", cwd=tmp_path)  # from a folder outside the repository

    doc, rows = quick_summary_rows(out, numeric=("detector_gflops",))
    assert doc["meta"]["framework"] == "mmdet" and doc["meta"]["recipe"] == "slimmable"
    for init in ("us3l", "random"):  # the whole detector is slimmed: its cost falls with the width
        assert rows[(init, 0.5)]["detector_gflops"] < 0.5 * rows[(init, 1.0)]["detector_gflops"]
    for seed in (0, 1):  # ONE checkpoint per (init, seed), its table holding both widths
        per_seed = load_results(str(out / "us3l" / f"seed{seed}"))["rows"]
        assert sorted(x["width"] for x in per_seed) == [0.5, 1.0]
        assert len({x["weights"] for x in per_seed}) == 1
    assert (out / "ap_vs_gflops.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
