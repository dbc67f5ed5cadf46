"""Running the main job (tools/run_main.py) as a user does, for the Detectron2 and MMDetection job tests."""
import json
import math
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(out, *args, cwd=REPO) -> str:
    """``run_main.py --quick --output OUT ARGS`` in a subprocess; its stdout (fails the test on a non-zero exit)."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "run_main.py"), "--quick", "--output", str(out),
                           *args], cwd=str(cwd), env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def quick_summary_rows(out, numeric=()) -> tuple:
    """``OUT/results.json`` of a ``--quick`` job: checks the rows every such job writes (both inits at widths 1.0 and
    0.5, seeds 0 and 1, finite AP / GFLOPs plus the ``numeric`` keys, AP within 0-100); returns (doc, rows by
    (init, width))."""
    doc = json.loads((out / "results.json").read_text())
    rows = {(r["init"], r["width"]): r for r in doc["rows"]}
    assert sorted(rows) == [("random", 0.5), ("random", 1.0), ("us3l", 0.5), ("us3l", 1.0)]
    for r in rows.values():
        assert r["seeds"] == [0, 1]
        for key in ("box_AP_mean", "box_AP_std", "mask_AP_mean", "backbone_gflops", *numeric):
            assert is_number(r[key]), (key, r)
        assert 0.0 <= r["box_AP_mean"] <= 100.0
    return doc, rows


def assert_demo_grid(out, widths) -> None:
    """The main job's demo: OUT/demo.png, one panel per (val image, width) of the job, each with its cost."""
    assert (out / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    panels = json.load(open(out / "demo.json"))["panels"]
    assert [(os.path.basename(p["image"]), p["width"]) for p in panels] == [
        (f"{i:06d}.png", w) for i in (1, 2, 3) for w in widths]
    for i in (1, 2, 3):  # a narrower detector costs less
        gflops = [p["gflops"] for p in panels if p["image"].endswith(f"{i:06d}.png")]
        assert all(a > b > 0 for a, b in zip(gflops, gflops[1:])), gflops
