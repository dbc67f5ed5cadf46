"""The framework table (us3l.frameworks): its paths exist, its overrides parse in each framework's own syntax, and
a run folder resolves to the weights each framework's trainer leaves."""
import os

import pytest

from us3l.frameworks import DETECTRON2, FRAMEWORKS, MMDETECTION, get_framework

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("name", sorted(FRAMEWORKS))
def test_every_script_and_config_the_table_names_is_in_the_repository(name):
    fw = get_framework(name)
    for path in (fw.train_script, fw.test_script, fw.convert_tool, *fw.configs.values()):
        assert os.path.isfile(os.path.join(ROOT, path)), path
    assert all(c.endswith(fw.config_suffix) for c in fw.configs.values())


def test_unknown_framework_names_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown framework 'detectron'.*\['d2', 'mmdet'\]"):
        get_framework("detectron")


def test_overrides_in_each_frameworks_syntax():
    from detectron2.config import get_cfg
    from mmengine.config import Config, DictAction

    cfg = get_cfg()
    cfg.merge_from_list([str(x) for x in [*DETECTRON2.frozen_backbone,
                                          *DETECTRON2.overrides({DETECTRON2.lr_key: 0.02})]])
    assert (cfg.MODEL.BACKBONE.FREEZE_AT, cfg.SOLVER.BASE_LR) == (5, 0.02)

    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--cfg-options", nargs="+", action=DictAction)
    opts = p.parse_args(["--cfg-options", *MMDETECTION.frozen_backbone,
                         *MMDETECTION.overrides({MMDETECTION.lr_key: 0.02})]).cfg_options
    merged = Config(dict(model=dict(backbone=dict(frozen_stages=-1)), optim_wrapper=dict(optimizer=dict(lr=0.01))))
    merged.merge_from_dict(opts)
    assert (merged.model.backbone.frozen_stages, merged.optim_wrapper.optimizer.lr) == (4, 0.02)


def test_run_folder_weights(tmp_path):
    assert DETECTRON2.run_weights(str(tmp_path)) == str(tmp_path / "model_final.pth")
    with pytest.raises(FileNotFoundError, match="no mmengine last_checkpoint"):
        MMDETECTION.run_weights(str(tmp_path))
    # mmengine writes the absolute path of the run's checkpoint; a moved run folder keeps only its base name
    (tmp_path / "last_checkpoint").write_text("/elsewhere/work/epoch_3.pth")
    assert MMDETECTION.run_weights(str(tmp_path)) == str(tmp_path / "epoch_3.pth")
    elsewhere = tmp_path / "kept_elsewhere.pth"  # a path that exists is taken as written
    elsewhere.write_bytes(b"")
    (tmp_path / "last_checkpoint").write_text(str(elsewhere))
    assert MMDETECTION.run_weights(str(tmp_path)) == str(elsewhere)
