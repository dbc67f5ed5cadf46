"""tools/pick_width.py: the width to deploy for a budget. The Pareto front and the choice from rows (including
ties and an impossible budget), then the tool on a real tiny slimmable MMDetection Mask R-CNN (trained one
iteration, calibrated at 1.0 / 0.5) as a user runs it: a GFLOPs budget between two widths' costs, an
impossible one (exit 2 naming the cheapest width), and a latency budget measured in onnxruntime with the chosen
plain detector and its ONNX graph written."""
import os
import re
import subprocess
import sys

import pytest
from ckpt_helpers import ROOT
from mmdet_helpers import MODEL_OPTS
from mmdet_helpers import cli_options as _cli

from us3l.detection.width_choice import NoWidthFits, pareto_front, pick

ROWS = [{"width": 1.0, "box_AP": 30.0, "mask_AP": 20.0, "cost": 10.0},
        {"width": 0.75, "box_AP": 28.0, "mask_AP": 19.0, "cost": 6.0},
        {"width": 0.5, "box_AP": 28.0, "mask_AP": 18.0, "cost": 3.0},  # ties 0.75 in box AP, cheaper
        {"width": 0.25, "box_AP": 20.0, "mask_AP": 12.0, "cost": 1.0}]


def test_pareto_front_keeps_widths_no_other_width_beats_for_less():
    assert [r["width"] for r in pareto_front(ROWS, "cost")] == [0.25, 0.5, 0.75, 1.0]
    worse = [*ROWS[:2], dict(ROWS[2], box_AP=19.0), ROWS[3]]  # 0.5 less accurate than the cheaper 0.25
    assert [r["width"] for r in pareto_front(worse, "cost")] == [0.25, 0.75, 1.0]
    dominated = [*ROWS[:3], dict(ROWS[3], cost=7.0)]  # 0.25 costs more than 0.75 and is less accurate
    assert [r["width"] for r in pareto_front(dominated, "cost")] == [0.5, 0.75, 1.0]


def test_pick_takes_the_most_accurate_width_that_fits():
    assert pick(ROWS, "cost", 10.0, "ms")["width"] == 1.0
    assert pick(ROWS, "cost", 9.9, "ms")["width"] == 0.75  # 0.75 beats 0.5 by mask AP
    assert pick(ROWS, "cost", 5.0, "ms")["width"] == 0.5
    tie = [dict(r, mask_AP=None) for r in ROWS]
    assert pick(tie, "cost", 9.0, "ms")["width"] == 0.5  # equal accuracy: the cheaper
    with pytest.raises(NoWidthFits, match=r"no width meets the budget of 0.5 ms: the cheapest is width 0.25 at 1 ms"):
        pick(ROWS, "cost", 0.5, "ms")


CONFIG = os.path.join(ROOT, "projects", "segmentation", "mmdet_configs", "mask-rcnn_us-r50_fpn_slimmable_tiny.py")
RUN_OPTS = {"train_cfg.max_epochs": 1, "train_dataloader.batch_size": 2, "train_dataloader.dataset.indices": 2,
            "default_hooks.checkpoint.interval": 1, "randomness.seed": 0}


@pytest.fixture(scope="module")
def calibrated(datasets, tmp_path_factory):
    from us3l.mmdet import detector_tools
    from us3l.mmdet.engine import train_main

    work = tmp_path_factory.mktemp("pick_width")
    train_main([CONFIG, "--work-dir", str(work / "train"), "--cfg-options", *_cli({**MODEL_OPTS, **RUN_OPTS})])
    path = str(work / "calibrated.pth")
    detector_tools.calibrate(str(work / "train" / "epoch_1.pth"), path, CONFIG, [1.0, 0.5], 1,
                             opts=_cli(MODEL_OPTS))
    return {"path": path, "work": work}


def _pick(calibrated, *args):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "pick_width.py"), calibrated["path"],
                           "--config", CONFIG, "--widths", "1.0", "0.5", *args, "--opts", *_cli(MODEL_OPTS)],
                          env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)


def _costs(stdout: str) -> dict[float, float]:
    return {float(m[1]): float(m[2]) for m in re.finditer(r"^\| \**([\d.]+)\** \| [^|]+\| [^|]+\| ([\d.e+-]+) \|",
                                                          stdout, re.M)}


def test_a_gflops_budget_picks_a_width_that_meets_it_and_an_impossible_one_exits_2(calibrated):
    from us3l.mmdet.detector_tools import evaluate

    rows = evaluate(calibrated["path"], CONFIG, [1.0, 0.5], str(calibrated["work"] / "eval"), _cli(MODEL_OPTS))
    gflops = {r["width"]: r["detector_gflops"] for r in rows}
    assert gflops[0.5] < gflops[1.0]
    budget = (gflops[0.5] + gflops[1.0]) / 2  # 1.0 does not fit; 0.5 does
    run = _pick(calibrated, "--gflops", f"{budget:.6f}")
    assert run.returncode == 0, run.stderr[-3000:]
    chosen = float(re.search(r"^chosen: width ([\d.]+)", run.stdout, re.M)[1])
    assert chosen == 0.5 and gflops[chosen] <= budget
    assert _costs(run.stdout) == pytest.approx(gflops, rel=1e-3)

    # the same rows as tools/eval_widths.py writes them: read, not measured again
    from us3l.pipeline.results_table import write_results

    write_results(rows, str(calibrated["work"] / "eval"))
    run = _pick(calibrated, "--gflops", f"{gflops[0.5] / 2:.6f}", "--results",
                str(calibrated["work"] / "eval" / "results.json"))
    assert run.returncode == 2, run.stderr[-3000:]
    assert run.stderr.strip().splitlines()[-1].startswith(
        f"error: no width meets the budget of {gflops[0.5] / 2:.6g} GFLOPs: the cheapest is width 0.5 at")


def test_a_latency_budget_in_onnxruntime_exports_the_chosen_width_and_its_onnx(calibrated, tmp_path):
    dst = tmp_path / "deploy" / "chosen.pth"
    dst.parent.mkdir()
    run = _pick(calibrated, "--latency-ms", "100000", "--runtime", "onnxruntime", "--threads", "1", "--runs", "2",
                "--export", str(dst), "--onnx")
    assert run.returncode == 0, run.stderr[-3000:]
    latency = _costs(run.stdout)
    assert sorted(latency) == [0.5, 1.0] and all(v > 0 for v in latency.values())
    chosen = float(re.search(r"^chosen: width ([\d.]+)", run.stdout, re.M)[1])
    assert sorted(p.name for p in dst.parent.iterdir()) == ["chosen.onnx", "chosen.pth", "chosen.py"]
    from mmengine.config import Config

    assert Config.fromfile(str(dst.parent / "chosen.py")).model.backbone.width_mult == chosen
