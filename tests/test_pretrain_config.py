"""Config system and bad input: unknown names/keys, bad width ranges, wrong resumes, missing data; nothing
overwritten."""
import importlib.util
import os

import pytest
import torch
from ckpt_helpers import ROOT
from pretrain_helpers import TINY, tiny_overrides

from us3l.engine.config import ConfigError, load_config
from us3l.engine.trainer import pretrain


def small(root, *extra):
    return tiny_overrides(root, "train.checkpoint_every=0", *extra)


def cli():
    spec = importlib.util.spec_from_file_location("pretrain_cli", os.path.join(ROOT, "tools", "pretrain.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def test_configs_load_with_inheritance():
    tiny = load_config(TINY)
    assert tiny.model.arch == "resnet18" and tiny.model.cifar_stem and tiny.data.dataset == "embedded"
    assert tiny.group_reg.lam == 5e-5 and tiny.method.temperature == 0.5  # from the CIFAR base
    r50 = load_config(os.path.join(ROOT, "configs", "us3l_imagenet_r50.yaml"))
    assert (r50.model.arch, r50.method.base_loss, r50.data.image_size,
            r50.train.epochs) == ("resnet50", "byol", 224, 100)
    c100 = load_config(os.path.join(ROOT, "configs", "us3l_cifar100_r18.yaml"), ["train.iterations=20", "data.root=/x"])
    assert c100.train.iterations == 20 and c100.data.root == "/x" and c100.method.base_loss == "simclr_momentum"


@pytest.mark.parametrize("override,match", [
    ("train.iteration=5", "unknown config key"),
    ("trian.iterations=5", "unknown config key"),
    ("method.name=simsam", "unknown method.name"),
    ("model.arch=resnet101x", "unknown model.arch"),
    ("data.dataset=imagenet22k", "unknown data.dataset"),
    ("model.width_range=[0.0,1.0]", "width_range"),
    ("model.width_range=[0.25,1.5]", "width_range"),
    ("model.width_range=[0.8,0.5]", "width_range"),
    ("train.iterations=abc", "train.iterations"),
    ("data.batch_size=2.5", "integer"),
    ("sampling.step_mode=sometimes", "step_mode"),
    ("group_reg.type=cubic", "group_reg.type"),
    ("data.embedded_style=texture", "data.embedded_style"),
])
def test_bad_config_values_are_errors(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(TINY, [override])


def test_unknown_key_in_yaml_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(f"_base_: {TINY}\ntrain:\n  itrations: 3\n")
    with pytest.raises(ConfigError, match="train.itrations"):
        load_config(str(p))


def test_missing_and_empty_dataset_roots(tmp_path):
    main = cli()
    empty = tmp_path / "empty"
    empty.mkdir()
    for root in (tmp_path / "missing", empty):
        out = tmp_path / f"out_{root.name}"
        assert main(["--config", TINY, "--output-dir", str(out), *small(root)]) == 2
        assert not (out / "last.pth").exists()


def test_wrong_resume_and_existing_run_overwrite_nothing(tiny_cls, tmp_path):
    out = tmp_path / "run"
    pretrain(load_config(TINY, small(tiny_cls["root"], "train.iterations=3", "train.stop_after=1")), str(out))
    last = out / "last.pth"
    before = last.read_bytes()
    # resuming with another method / another schedule: refused
    for bad in (["method.name=simsiam_naive"], ["optim.lr=0.1"], ["model.width_range=[0.5,1.0]"]):
        with pytest.raises(ConfigError, match="another config"):
            pretrain(load_config(TINY, small(tiny_cls["root"], "train.iterations=3", *bad)), str(out), resume=True)
    # a new run into a folder that holds one: refused (no --resume)
    with pytest.raises(ConfigError, match="already holds a run"):
        pretrain(load_config(TINY, small(tiny_cls["root"], "train.iterations=3")), str(out))
    assert last.read_bytes() == before and not (out / "final.pth").exists()
    # the CLI reports the same errors with exit status 2
    assert cli()(["--config", TINY, "--output-dir", str(out), "--resume",
                  *small(tiny_cls["root"], "train.iterations=3", "method.name=simclr")]) == 2
    assert last.read_bytes() == before
    # checkpoints hold only tensors and plain values
    ck = torch.load(str(last), map_location="cpu", weights_only=True)
    assert ck["format"] == "us3l.pretrain/1" and ck["progress"]["iteration"] == 1


def test_every_shipped_config_loads():
    import glob
    paths = sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml")))
    assert len(paths) >= 4
    for p in paths:
        load_config(p)
