"""The main job (tools/run_main.py -> us3l.pipeline): a --quick end-to-end run, the seed summary, the tables.

Checks what a user gets: every output exists and parses, one row per (init, width) with mean and spread over
the seeds, backbone cost shrinks with the width, a rerun skips the finished stages, and the default output
folder is one git ignores (a run never modifies the checkout).
"""
import csv
import json
import os
import subprocess
import sys

import pytest
from main_job_helpers import assert_demo_grid, is_number, quick_summary_rows, run_main

from us3l.pipeline.main_job import parse_args
from us3l.pipeline.results_table import load_results, write_results
from us3l.pipeline.summary import init_comparison, summarize, width_effect, write_summary

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.timeout(900)
def test_main_job_quick(tmp_path):
    out = tmp_path / "main"
    log = run_main(out, "--finetune-opts", "TEST.PRECISE_BN.ENABLED", "False")
    assert "[us3l-main" in log and "summary" in log  # progress is shown stage by stage

    for name in ("results.json", "results.csv", "results.md", "ap_vs_gflops.png", "stages.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "ap_vs_gflops.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    doc, rows = quick_summary_rows(out, numeric=("mask_AP_std",))
    for r in rows.values():
        assert r["box_AP_std"] >= 0
        if doc["meta"]["recipe"] == "slimmable":  # whole-detector cost comes from the slimmable detector's eval
            assert is_number(r["detector_gflops"]), r
        # the summary is the mean over the per-seed tables each run wrote
        per_seed = [next(x for x in load_results(str(out / r["init"] / f"seed{s}"))["rows"] if x["width"] == r["width"])
                    for s in (0, 1)]
        assert r["box_AP_mean"] == pytest.approx(sum(x["box_AP"] for x in per_seed) / 2)
    for init in ("us3l", "random"):
        assert rows[(init, 0.5)]["backbone_gflops"] < rows[(init, 1.0)]["backbone_gflops"]
    assert doc["meta"]["total_seconds"] > 0 and doc["meta"]["seeds"] == [0, 1]
    # 4 detector runs: the first training alone on every core, the rest side by side (threads recorded)
    cores = os.cpu_count() or 1
    shared = max(1, cores // min(4, cores))
    threads = doc["meta"]["stage_threads"]
    assert threads["us3l_seed1_train"] == shared and threads["random_seed0_evaluate"] == shared
    assert threads["us3l_seed0_train"] == (cores if shared < cores else shared)
    # each evaluation's result shows on the console as soon as it is written (the first result, early)
    for init in ("us3l", "random"):
        for s in (0, 1):
            seed = {x["width"]: x["box_AP"] for x in load_results(str(out / init / f"seed{s}"))["rows"]}
            ap = {w: "n/a" if v is None else f"{v:.1f}" for w, v in seed.items()}
            assert f"{init}_seed{s}_evaluate: box AP {ap[1.0]} at 1.00x ... {ap[0.5]} at 0.50x; table: " in log

    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [(t["init"], float(t["width"])) for t in table] == [("us3l", 1.0), ("us3l", 0.5), ("random", 1.0),
                                                               ("random", 0.5)]
    md = (out / "results.md").read_text()
    assert "| init | width |" in md and "width effect" in md
    assert_demo_grid(out, [1.0, 0.5])

    # a rerun with the same command skips every finished stage
    n_stages = len(json.loads((out / "stages.json").read_text()))
    log2 = run_main(out, "--finetune-opts", "TEST.PRECISE_BN.ENABLED", "False")
    assert log2.count("done earlier, skipped") == n_stages, log2
    assert json.loads((out / "results.json").read_text())["rows"] == doc["rows"]


def test_default_output_is_ignored_by_git():
    """A plain run writes to runs/main, which git ignores: the committed results/main is never rewritten."""
    args = parse_args([])
    assert args.output == "runs/main" and len(args.widths) >= 8 and len(args.seeds) >= 3
    assert args.inits == ["us3l", "random"]
    if not os.path.isdir(os.path.join(REPO, ".git")) and not os.path.isfile(os.path.join(REPO, ".git")):
        pytest.skip("not a git checkout")
    probe = subprocess.run(["git", "check-ignore", "-q", "runs/main/results.json"], cwd=REPO)
    assert probe.returncode == 0, "runs/main must be ignored by git"
    quick = parse_args(["--quick", "--widths", "1.0", "0.75", "0.5"])
    assert quick.widths == [1.0, 0.75, 0.5] and quick.finetune_iters == 2  # explicit options win over --quick


def test_per_width_folders_are_the_ones_eval_widths_reads(tmp_path):
    """The per-width recipe trains into ``finetune/<width tag>``; tools/eval_widths.py fills the evaluation's
    ``finetune/w{width}`` template with the same tag (one rule: us3l.width.width_tag), three decimals included."""
    from tools_loader import load_tool

    from us3l.pipeline.commands import Job, detector_stages

    weights_for = load_tool("eval_widths").weights_for
    for framework in ("d2", "mmdet"):
        job = Job(py="python", framework=framework, recipe="per-width", out=str(tmp_path), data_root=str(tmp_path),
                  class_names=["a"], image_size=64, widths=(1.0, 0.5, 0.375))
        *train, evaluate = detector_stages(job, "us3l", 0, "")
        template = evaluate.cmd[2]
        trained = [os.path.dirname(stage.outputs[0]) for stage in train]
        assert [weights_for(template, w) for w in job.widths] == trained
        assert [os.path.basename(d) for d in trained] == ["w1.00", "w0.50", "w0.375"]


def test_summary_mean_std_and_width_effect(tmp_path):
    runs = {"us3l": {0: [{"width": 1.0, "box_AP": 30.0, "mask_AP": 20.0, "detector_gflops": 2.0, "gflops": 1.0},
                         {"width": 0.25, "box_AP": 20.0, "mask_AP": 10.0, "detector_gflops": 0.2, "gflops": 0.1}],
                     1: [{"width": 1.0, "box_AP": 32.0, "mask_AP": 22.0, "detector_gflops": 2.0, "gflops": 1.0},
                         {"width": 0.25, "box_AP": 22.0, "mask_AP": float("nan"), "detector_gflops": 0.2,
                          "gflops": 0.1}],
                     2: [{"width": 1.0, "box_AP": 34.0, "mask_AP": 24.0, "detector_gflops": 2.0, "gflops": 1.0},
                         {"width": 0.25, "box_AP": 33.0, "mask_AP": 11.0, "detector_gflops": 0.2, "gflops": 0.1}]}}
    rows = summarize(runs)
    by_w = {r["width"]: r for r in rows}
    assert by_w[1.0]["seeds"] == [0, 1, 2] and by_w[1.0]["box_AP_mean"] == pytest.approx(32.0)
    assert by_w[1.0]["box_AP_std"] == pytest.approx(2.0)  # sample std of 30, 32, 34
    assert by_w[0.25]["mask_AP_mean"] == pytest.approx(10.5)  # NaN (empty evaluation) left out
    assert by_w[0.25]["detector_gflops"] == 0.2 and by_w[0.25]["backbone_gflops"] == 0.1
    eff = width_effect(rows, "us3l")
    # gap 32 - 25 = 7; std at 0.25 = std(20, 22, 33) = 7.0 -> noise 14: within noise
    assert eff["gap"] == pytest.approx(7.0) and eff["twice_max_std"] == pytest.approx(14.0) and not eff["shows"]
    paths = write_summary(rows, str(tmp_path), "t")
    doc = json.loads(open(paths["json"]).read())
    assert doc["width_effect"][0]["shows"] is False
    assert {k for k in ("width", "init", "seeds", "box_AP_mean", "box_AP_std", "mask_AP_mean", "mask_AP_std",
                        "detector_gflops")} <= set(doc["rows"][0])
    assert open(paths["png"], "rb").read(4) == b"\x89PNG"


def test_us3l_vs_random_verdict_per_width(tmp_path):
    def run(box1, box2):
        return [{"width": 1.0, "box_AP": box1, "mask_AP": 1.0}, {"width": 0.5, "box_AP": box2, "mask_AP": 1.0}]

    runs = {"us3l": {0: run(30.0, 20.0), 1: run(31.0, 21.0), 2: run(32.0, 22.0)},
            "random": {0: run(20.0, 19.0), 1: run(21.0, 21.0), 2: run(22.0, 23.0)}}
    rows = summarize(runs)
    got = {c["width"]: c for c in init_comparison(rows)}
    assert got[1.0]["gap"] == pytest.approx(10.0) and got[1.0]["twice_max_std"] == pytest.approx(2.0)
    assert got[1.0]["verdict"] == "better"
    assert got[0.5]["gap"] == pytest.approx(0.0) and got[0.5]["verdict"] == "within noise"  # std 2 -> noise 4
    runs["us3l"] = {s: run(10.0 + s, 21.0) for s in range(3)}
    assert init_comparison(summarize(runs))[0]["verdict"] == "worse"
    paths = write_summary(summarize(runs), str(tmp_path), "t")
    assert json.loads(open(paths["json"]).read())["us3l_vs_random"][0]["verdict"] == "worse"
    assert "US3L vs random init" in open(paths["md"]).read()


def test_results_table_renders_and_rejects_nan(tmp_path):
    rows = [{"width": 0.5, "box_AP": 1.5, "mask_AP": float("nan"), "gflops": 0.3, "params_m": 3.0, "latency_ms": 2.0},
            {"width": 1.0, "box_AP": 2.5, "mask_AP": 2.0, "gflops": 1.2, "params_m": 11.0, "latency_ms": 5.0}]
    paths = write_results(rows, str(tmp_path), "t")
    doc = load_results(paths["json"])
    assert [r["width"] for r in doc["rows"]] == [1.0, 0.5]
    assert doc["rows"][1]["mask_AP"] is None  # NaN is not valid JSON
    assert "n/a" in open(paths["md"]).read()
    assert open(paths["png"], "rb").read(4) == b"\x89PNG"


def _stage(name, out_dir, code):
    from us3l.pipeline.commands import Stage
    target = os.path.join(out_dir, name + ".txt")
    script = f"import os; {code}; open({target!r}, 'w').write(os.environ['OMP_NUM_THREADS'])"
    return Stage(name, [sys.executable, "-c", script], [target])


def test_parallel_chains_run_skip_and_fail(tmp_path, capsys):
    """Independent chains run side by side with the cores shared out; a rerun skips them; a failure is raised."""
    from us3l.pipeline.stages import StageFailed, StageRunner

    out = str(tmp_path)
    chains = [[_stage(f"c{i}_a", out, "pass"), _stage(f"c{i}_b", out, "sum(range(10**6))")] for i in range(3)]
    chains[1][1].report = lambda: "REPORT " + open(chains[1][1].outputs[0]).read()  # read once the stage wrote it
    runner = StageRunner(out, out, dict(os.environ))
    runner.run_parallel(chains, jobs=2, first_index=1, total=7)
    threads = str(max(1, (os.cpu_count() or 1) // 2))
    for chain in chains:
        for st in chain:
            assert open(st.outputs[0]).read() == threads  # each child got its share of the cores
            assert runner.record[st.name]["cpu_seconds"] >= 0
    assert runner.ran_any
    text = capsys.readouterr().out
    assert "3 independent runs, 2 at a time" in text and text.count("finished in") == 6
    assert text.count("REPORT") == 1 and f"[4/7] c1_b: REPORT {threads}" in text  # after the stage, not before

    again = StageRunner(out, out, dict(os.environ))
    again.run_parallel(chains, jobs=2, first_index=1, total=7)
    text = capsys.readouterr().out
    assert text.count("done earlier, skipped") == 6 and not again.ran_any and "REPORT" not in text

    # a stage that reran before the chains (e.g. a new pre-training) makes every chain rerun
    again.ran_any = True
    again.run_parallel(chains[:1], jobs=2, first_index=1, total=3)
    assert capsys.readouterr().out.count("finished in") == 2

    # lead: the first chain's first stage runs alone on every core, then the rest side by side; a lead stage that
    # reran makes the rest of its chain rerun, the other chains stay skipped
    cores = os.cpu_count() or 1
    os.remove(chains[0][0].outputs[0])
    lead = StageRunner(out, out, dict(os.environ))
    lead.run_parallel(chains, jobs=2, first_index=1, total=7, lead=True)
    text = capsys.readouterr().out
    assert text.count("finished in") == 2 and text.count("done earlier, skipped") == 4
    lead_threads = str(cores) if int(threads) < cores else threads
    assert open(chains[0][0].outputs[0]).read() == lead_threads
    assert open(chains[0][1].outputs[0]).read() == threads
    recorded = lead.stage_meta("threads")
    assert recorded["c0_a"] == int(lead_threads) and recorded["c0_b"] == int(threads)
    assert recorded["c1_a"] == int(threads)  # skipped: taken from the record of the run that made it
    if int(threads) < cores:
        assert text.index("c0_a first, alone on") < text.index("3 independent runs")

    bad = [[_stage("ok", out, "pass")], [_stage("bad", out, "raise SystemExit(3)")]]
    with pytest.raises(StageFailed, match="'bad' failed .exit 3.; log: .*bad.log"):
        StageRunner(out, out, dict(os.environ)).run_parallel(bad, jobs=2, first_index=1, total=3)
    assert os.path.exists(os.path.join(out, "ok.txt"))  # the other chain still finished
