"""The transfer table (scripts/transfer_table.sh -> us3l.pipeline.transfer_table): the --quick road end to end as a
user runs it, the rows and files it writes, and the rows -> table / reading functions on their own."""
import json
import os
import subprocess
import sys

import pytest

from us3l.pipeline.transfer_summary import probe_rows, transfer_rows, write_transfer_table
from us3l.pipeline.transfer_table import parse_args

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# every kind of row (no backbone, a slimmable SSL pre-training, the collapsing baseline, one fixed-width pre-training
# per width); simsiam_inplace is simsiam_naive's road with another pre-training method (tests/test_ssl_methods.py)
METHODS = ("random", "simsiam_naive", "us3l", "individual")
ROW_KEYS = {"method", "protocol", "width", "seeds", "box_AP_mean", "box_AP_std", "mask_AP_mean", "mask_AP_std",
            "detector_gflops"}


def _run(out, *args):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "transfer_table.py"), str(out), "--quick",
                           "--methods", *METHODS, "--finetune-opts", "TEST.PRECISE_BN.ENABLED", "False", *args],
                          cwd=REPO, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout


@pytest.mark.timeout(1200)
def test_quick_transfer_table_end_to_end(tmp_path):
    out = tmp_path / "transfer"
    log = _run(out)
    for name in ("results.json", "results.csv", "results.md", "ap_vs_gflops.png"):
        assert (out / name).stat().st_size > 0, name
    doc = json.loads((out / "results.json").read_text())
    stages = json.loads((out / "stages.json").read_text())
    rows = {(r["method"], r["protocol"], r["width"]): r for r in doc["rows"]}
    frozen = {(m, "frozen", w) for m in METHODS for w in (1.0, 0.5)}
    finetune = {(m, "finetune", w) for m in ("random", "us3l") for w in (1.0, 0.5)}  # --quick's fine-tuned rows
    assert set(rows) == frozen | finetune
    for r in rows.values():
        assert ROW_KEYS <= set(r) and r["seeds"] == [0, 1]
        assert 0.0 <= r["box_AP_mean"] <= 100.0 and r["box_AP_std"] is not None and r["detector_gflops"] > 0
    # the individual row is one fixed-width detector per width: cheaper at 0.5 than at 1.0, like the others
    ind_cost = {w: rows[("individual", "frozen", w)]["detector_gflops"] for w in (1.0, 0.5)}
    assert ind_cost[0.5] < ind_cost[1.0]
    # the slimmable rows: one checkpoint per (method, seed) evaluated at both widths
    assert (out / "frozen" / "us3l" / "seed1" / "train" / "model_final.pth").is_file()
    assert not (out / "frozen" / "us3l" / "seed1" / "finetune").exists()
    # the individual detectors: the slimmable detector trained at its one width (same neck and heads at that width)
    ind = stages["frozen_individual_w0.50_seed0_train"]["cmd"]
    assert ind[ind.index("MODEL.US3L.WIDTH_RANGE") + 1] == "[0.5, 0.5]"
    assert rows[("individual", "frozen", 0.5)]["detector_gflops"] == rows[("us3l", "frozen", 0.5)]["detector_gflops"]
    # the probe of the same backbones, per width; random over one backbone per seed, individual at its width
    probe = {(p["method"], p["width"]): p for p in doc["probe"]}
    assert probe[("random", 1.0)]["seeds"] == [0, 1] and probe[("random", 1.0)]["linear_top1_std"] is not None
    pretrained = ("simsiam_naive", "us3l", "individual")
    assert {(m, w) for m in pretrained for w in (1.0, 0.5)} <= set(probe)
    # the reading is written from the rows (one line per protocol and width, per metric, then the claim)
    lines = doc["reading"]["box_AP"]
    assert any(line.startswith("frozen 0.5x, box AP: us3l vs random") for line in lines)
    assert any(line.startswith("finetune 1x, box AP: us3l vs random") for line in lines)
    md = (out / "results.md").read_text()
    assert "| method | protocol | width |" in md and "Frozen probe" in md and lines[0] in md
    # the frozen detector's trunk really is frozen (Detectron2 FREEZE_AT 5 in its training command)
    cmd = stages["frozen_us3l_seed0_train"]["cmd"]
    assert cmd[cmd.index("MODEL.BACKBONE.FREEZE_AT") + 1] == "5"
    cmd = stages["finetune_us3l_seed0_train"]["cmd"]
    assert cmd[cmd.index("MODEL.BACKBONE.FREEZE_AT") + 1] == "0"
    assert "summary" in log
    # resumable stage by stage: a rerun skips every finished stage and writes the same rows
    log2 = _run(out)
    assert log2.count("done earlier, skipped") == len(stages), log2[-3000:]
    assert json.loads((out / "results.json").read_text())["rows"] == doc["rows"]


def test_quick_and_scale_fill_only_what_was_not_given():
    args = parse_args(["OUT", "--quick", "--pretrain-iters", "7"])
    assert args.pretrain_iters == 7 and args.widths == [1.0, 0.5] and args.finetune_methods == ["random", "us3l"]
    big = parse_args(["OUT", "--scale", "10"])
    assert big.pretrain_iters == 15000 and big.pool_size == 40960 and big.num_train == 64
    assert big.widths == [1.0, 0.75, 0.5, 0.25] and big.seeds == [0, 1, 2]
    assert parse_args(["OUT", "--finetune-methods", "us3l"]).finetune_methods == ["us3l"]
    with pytest.raises(ValueError, match="--scale must be >= 1"):  # exit 2 through tools/transfer_table.py
        parse_args(["OUT", "--scale", "0"])


def test_pretrained_rows_name_a_method_and_an_existing_file(tmp_path):
    ckpt = tmp_path / "final.pth"
    ckpt.write_bytes(b"x")
    got = parse_args(["OUT", "--pretrained", f"us3l={ckpt}", f"individual@0.5={ckpt}"]).pretrained
    assert got == {("us3l", None): str(ckpt), ("individual", 0.5): str(ckpt)}
    for bad, says in ((f"random={ckpt}", "METHOD one of"), ("us3l=" + str(tmp_path / "none.pth"), "no such file"),
                      (f"individual={ckpt}", "individual@WIDTH"), (f"individual@0.3={ckpt}", "width 0.3 is not"),
                      ("us3l", "METHOD=CHECKPOINT")):
        with pytest.raises(ValueError if "no such file" not in says else FileNotFoundError, match=says):
            parse_args(["OUT", "--pretrained", bad])


def _run_rows(aps):
    return [{"width": w, "box_AP": ap, "mask_AP": ap / 2, "detector_gflops": w} for w, ap in aps.items()]


def test_rows_and_reading_from_per_seed_tables(tmp_path):
    """Means and stds over seeds per (method, protocol, width); individual rows gathered from one run per width;
    a row where US3L falls below an alternative reads "worse"."""
    runs = {"frozen": {"us3l": {0: _run_rows({1.0: 10.0, 0.5: 6.0}), 1: _run_rows({1.0: 12.0, 0.5: 6.2})},
                       "random": {0: _run_rows({1.0: 2.0, 0.5: 9.0}), 1: _run_rows({1.0: 1.2, 0.5: 9.2})},
                       "individual": {0: _run_rows({1.0: 11.0}) + _run_rows({0.5: 5.0}),
                                      1: _run_rows({1.0: 11.0}) + _run_rows({0.5: 5.4})}}}
    rows = transfer_rows(runs)
    by = {(r["method"], r["width"]): r for r in rows}
    assert [r["method"] for r in rows] == ["random", "random", "us3l", "us3l", "individual", "individual"]
    assert by[("us3l", 1.0)]["box_AP_mean"] == pytest.approx(11.0)
    assert by[("us3l", 1.0)]["box_AP_std"] == pytest.approx(2 ** 0.5)
    assert by[("individual", 0.5)]["box_AP_mean"] == pytest.approx(5.2) and by[("individual", 0.5)]["seeds"] == [0, 1]
    probe = probe_rows({"random": {0: [{"width": 1.0, "linear_top1": 30.0, "knn_top1": 28.0}],
                                   1: [{"width": 1.0, "linear_top1": 34.0, "knn_top1": 30.0}]},
                        "us3l": {0: [{"width": 1.0, "linear_top1": 50.0, "knn_top1": 45.0}]}})
    assert probe[0]["method"] == "random" and probe[0]["linear_top1_mean"] == pytest.approx(32.0)
    assert probe[1]["linear_top1_std"] is None  # one pre-training: no spread claimed
    paths = write_transfer_table(rows, probe, str(tmp_path), "t")
    doc = json.loads(open(paths["json"]).read())
    lines = doc["reading"]["box_AP"]
    assert any(line.startswith("frozen 1x, box AP: us3l vs random +9.4") and "better" in line for line in lines)
    assert any(line.startswith("frozen 0.5x, box AP: us3l vs random -3.0") and "worse" in line for line in lines)
    assert any("not reproduced at frozen 0.5x against random" in line for line in lines)
    assert open(paths["png"], "rb").read()[:4] == b"\x89PNG"
