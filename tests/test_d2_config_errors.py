"""A misspelt Detectron2 config key, in a file or as an override, is one ``error:`` line naming the key and the
closest valid one (exit 2, nothing written); yacs alone raises a bare KeyError / AssertionError (a traceback)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "projects", "segmentation", "configs", "mask_rcnn_US-R50_FPN_slimmable_tiny.yaml")


@pytest.mark.parametrize("where", ["file", "override"])
def test_a_misspelt_key_names_the_closest_one(tmp_path, where):
    config, opts = TINY, ["MODEL.US3L.WIDTH_MUL", "0.5"]
    if where == "file":
        config = tmp_path / "mine.yaml"
        config.write_text(f"_BASE_: {TINY!r}\nSOLVER:\n  BASE_RL: 0.01\n")
        opts = []
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "projects", "segmentation", "train_net.py"),
                        "--config-file", str(config), *opts, "OUTPUT_DIR", str(out)], cwd=tmp_path,
                       env=dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    expected = ("SOLVER.BASE_RL", "SOLVER.BASE_LR") if where == "file" else ("MODEL.US3L.WIDTH_MUL",
                                                                            "MODEL.US3L.WIDTH_MULT")
    assert last.startswith("error: ") and f"{expected[0]} is not a Detectron2 / US3L config key; did you mean " \
        f"{expected[1]}?" in last, last
    assert "Traceback" not in r.stderr and not out.exists()


def test_an_odd_override_list_is_a_usage_error(tmp_path):
    from us3l.d2 import load_config

    with pytest.raises(ValueError, match="the command-line overrides: Override list has odd length"):
        load_config(TINY, ["SOLVER.BASE_LR"])
