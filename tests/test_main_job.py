"""End-to-end smoke run of the main job (tools/run_main.py) at a tiny budget: two widths, a few iterations.

Checks what a user gets: every output exists and parses, the table holds finite numbers for each width,
backbone cost shrinks with the width, and a rerun skips the finished stages.
"""
import csv
import json
import math
import os
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))

TINY = ["--widths", "1.0", "0.5", "--num-train", "8", "--num-val", "4", "--image-size", "64",
        "--pretrain-iters", "2", "--pretrain-batch", "8", "--calib-batches", "1", "--calib-batch-size", "8",
        "--finetune-iters", "2", "--latency-runs", "1", "--profile-size", "64",
        "--finetune-opts", "TEST.PRECISE_BN.ENABLED", "False"]


def _run_main(out, datasets):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.time()
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "run_main.py"), "--output-dir", str(out),
                           "--datasets", str(datasets), *TINY], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout, time.time() - t0


def _is_number(v):
    return isinstance(v, (int, float)) and math.isfinite(v)


@pytest.mark.timeout(600)
def test_main_job_tiny(tmp_path):
    out, datasets = tmp_path / "main", tmp_path / "datasets"
    log, _ = _run_main(out, datasets)
    assert "[us3l-main" in log and "evaluate" in log  # progress is shown stage by stage

    for name in ("results.json", "results.csv", "results.md", "ap_vs_gflops.png", "metrics.json", "stages.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "ap_vs_gflops.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    doc = json.loads((out / "results.json").read_text())
    rows = {r["width"]: r for r in doc["rows"]}
    assert sorted(rows) == [0.5, 1.0]
    for r in rows.values():
        for key in ("box_AP", "mask_AP", "gflops", "params_m", "latency_ms"):
            assert _is_number(r[key]), (key, r)
        assert 0.0 <= r["box_AP"] <= 100.0 and 0.0 <= r["mask_AP"] <= 100.0
    assert rows[0.5]["gflops"] < rows[1.0]["gflops"] and rows[0.5]["params_m"] < rows[1.0]["params_m"]
    assert doc["meta"]["arch"] == "resnet18" and doc["meta"]["total_seconds"] > 0

    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [float(t["width"]) for t in table] == [1.0, 0.5]
    assert all(float(t["box_AP"]) == pytest.approx(rows[float(t["width"])]["box_AP"]) for t in table)
    md = (out / "results.md").read_text()
    assert "| width |" in md and md.count("\n| ") >= 3
    flat = json.loads((out / "metrics.json").read_text())
    assert _is_number(flat["w0.50/mask_AP"]) and _is_number(flat["w1.00/gflops"])

    # the detectors really are different widths: one fine-tuned checkpoint per width
    assert (out / "finetune" / "w1.00" / "model_final.pth").is_file()
    assert (out / "finetune" / "w0.50" / "model_final.pth").is_file()

    # a rerun with the same command skips every finished stage
    log2, _ = _run_main(out, datasets)
    assert log2.count("done earlier, skipped") == 7, log2
    assert json.loads((out / "results.json").read_text())["rows"] == doc["rows"]


def test_results_table_renders_and_rejects_nan(tmp_path):
    from results_table import load_results, write_results

    rows = [{"width": 0.5, "box_AP": 1.5, "mask_AP": float("nan"), "gflops": 0.3, "params_m": 3.0, "latency_ms": 2.0},
            {"width": 1.0, "box_AP": 2.5, "mask_AP": 2.0, "gflops": 1.2, "params_m": 11.0, "latency_ms": 5.0}]
    paths = write_results(rows, str(tmp_path), "t")
    doc = load_results(paths["json"])
    assert [r["width"] for r in doc["rows"]] == [1.0, 0.5]
    assert doc["rows"][1]["mask_AP"] is None  # NaN is not valid JSON
    assert "n/a" in open(paths["md"]).read()
    assert open(paths["png"], "rb").read(4) == b"\x89PNG"
