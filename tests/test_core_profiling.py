"""Cost per width: fvcore FLOPs and parameters shrink with the width; the tool prints the table."""
import pytest
from tools_loader import load_tool

from us3l.profiling import profile_width


def test_flops_and_params_shrink_about_quadratically():
    rows = {w: profile_width("resnet50", w, image_size=64, runs=0) for w in (1.0, 0.5, 0.25)}
    assert rows[1.0]["gflops"] == pytest.approx(4.11 * (64 / 224) ** 2, rel=0.02)  # ResNet-50 ~4.1 GFLOPs @224
    assert rows[1.0]["params_m"] == pytest.approx(23.51, abs=0.01)  # torchvision resnet50 without fc
    for small, big in ((0.5, 1.0), (0.25, 0.5)):
        assert 3.0 < rows[big]["gflops"] / rows[small]["gflops"] < 4.5
        assert 3.0 < rows[big]["params_m"] / rows[small]["params_m"] < 4.5


def test_profile_widths_tool_prints_a_row_per_width(capsys, tmp_path):
    load_tool("profile_widths").main(["--arch", "resnet18", "--widths", "1.0", "0.35", "--image-size", "64",
                                      "--runs", "1", "--output", str(tmp_path / "rows.json")])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| 1 ") or ln.startswith("| 0.35 ")]
    assert len(lines) == 2
