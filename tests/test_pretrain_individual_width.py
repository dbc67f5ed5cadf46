"""The paper's "individually trained" row: ``model.individual_width`` trains ONE width every iteration (teacher at
that width too), leaves every channel beyond it untouched, and says so in the checkpoint meta
(``individual_width``; not ``fixed_width``, which means tensors already sliced to one width)."""
import os

import pytest
import torch
from pretrain_helpers import TINY, tiny_overrides

from us3l.checkpoint import read_checkpoint
from us3l.engine.config import ConfigError, load_config
from us3l.engine.trainer import pretrain
from us3l.ops import active_channels


@pytest.mark.parametrize("method", ["us3l", "simsiam_naive"])
def test_individual_width_trains_only_its_channels(tiny_cls, tmp_path, method):
    from us3l.ssl.methods import build_method

    cfg = load_config(TINY, tiny_overrides(tiny_cls["root"], f"method.name={method}", "model.individual_width=0.5",
                                           "train.iterations=2", "train.log_every=1", "sampling.dynamic=false",
                                           # no decay of any kind, so "untouched" is exact
                                           "group_reg.enabled=false", "optim.weight_decay=0.0"))
    torch.manual_seed(cfg.train.seed)
    init = build_method(cfg).online.backbone.state_dict()
    out = tmp_path / method
    pretrain(cfg, str(out))
    ckpt = read_checkpoint(str(out / "final.pth"))
    assert ckpt["meta"]["individual_width"] == 0.5
    state = {k[len("backbone."):]: v for k, v in ckpt["model"].items() if k.startswith("backbone.")}
    w = state["layer3.0.conv1.weight"]
    c_out, c_in = active_channels(w.shape[0], 0.5), active_channels(w.shape[1], 0.5)
    w0 = init["layer3.0.conv1.weight"]
    assert not torch.equal(w[:c_out, :c_in], w0[:c_out, :c_in])  # its own slice trained
    assert torch.equal(w[c_out:], w0[c_out:]) and torch.equal(w[:, c_in:], w0[:, c_in:])  # nothing else moved
    log = open(os.path.join(out, "log.txt")).read()
    assert log.count("widths [0.5] ") == 2 and "loss/mid" not in log and "loss/min" not in log
    if method == "us3l":  # the teacher runs at 0.5, like the student
        from us3l.width import get_width

        m = build_method(cfg)
        assert get_width(m.teacher.backbone) == 0.5 and m.max_width == 0.5


def test_individual_width_outside_the_range_is_refused(tiny_cls):
    for bad in ("0.1", "1.5", "true", "'half'"):
        with pytest.raises(ConfigError, match="model.individual_width"):
            load_config(TINY, tiny_overrides(tiny_cls["root"], f"model.individual_width={bad}"))
