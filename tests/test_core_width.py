"""Width control: one helper sets it, bad widths are refused without changing anything."""
import pytest
import torch

import us3l
from us3l.models import us_resnet18


def test_set_get_and_context_manager():
    model = us_resnet18(num_classes=10)
    assert us3l.get_width(model) == 1.0
    assert us3l.set_width(model, 0.35) == 0.35
    with us3l.width(model, 0.5) as w:
        assert w == 0.5 and us3l.get_width(model) == 0.5
    assert us3l.get_width(model) == 0.35


def test_context_manager_restores_after_error():
    model = us_resnet18(num_classes=10)
    with pytest.raises(ZeroDivisionError):
        with us3l.width(model, 0.5):
            raise ZeroDivisionError
    assert us3l.get_width(model) == 1.0


@pytest.mark.parametrize("bad", [0.2, 1.01, -1, float("nan"), "wide"])
def test_out_of_range_width_is_refused_and_model_unchanged(bad):
    model = us_resnet18(num_classes=10)
    us3l.set_width(model, 0.5)
    with pytest.raises(ValueError, match=r"0\.25, 1\.0|number"):
        us3l.set_width(model, bad)
    assert us3l.get_width(model) == 0.5


def test_custom_width_range_is_enforced():
    model = us_resnet18(num_classes=10, width_range=(0.5, 1.0))
    with pytest.raises(ValueError, match=r"\[0\.5, 1\.0\]"):
        us3l.set_width(model, 0.25)


def test_set_width_on_plain_model_is_a_clear_error():
    with pytest.raises(ValueError, match="no slimmable layers"):
        us3l.set_width(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3)), 0.5)


def test_import_does_not_pull_detection_frameworks():
    import subprocess
    import sys
    code = "import sys, us3l, us3l.models, us3l.checkpoint; print('detectron2' in sys.modules, 'mmdet' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
