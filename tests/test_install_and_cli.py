"""The project behaves like an installed package: importable from any folder, entry scripts without
``sys.path`` edits, console scripts, one exit-code convention (us3l.cli)."""
import glob
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONSOLE_SCRIPTS = ("us3l-pretrain", "us3l-eval-ssl", "us3l-train-net", "us3l-mmdet-train", "us3l-mmdet-test")
ENTRY_SCRIPTS = sorted(p for folder in ("tools", "bench", "projects/*") for p in glob.glob(f"{ROOT}/{folder}/*.py")
                       if '__name__ == "__main__"' in open(p).read())  # (library modules still in tools/ skipped)


def _installed_env():
    """The environment of a user: no PYTHONPATH, so ``us3l`` comes from the installation."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)
    return env


def _run(cmd, cwd, env=None):
    return subprocess.run(cmd, cwd=cwd, env=env or _installed_env(), capture_output=True, text=True, timeout=300)


def test_us3l_imports_from_another_folder_as_an_editable_install(tmp_path):
    r = _run([sys.executable, "-c", "import os, us3l; print(os.path.realpath(us3l.__path__[0]))"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert os.path.isfile(os.path.join(r.stdout.strip(), "__init__.py"))
    show = _run([sys.executable, "-m", "pip", "show", "us3l"], tmp_path)
    assert show.returncode == 0 and "Editable project location" in show.stdout, show.stdout + show.stderr


def test_mmdet_config_outside_the_repository_imports_the_plugin(tmp_path):
    """``custom_imports=['us3l.mmdet']`` resolves through the installation, not the current folder."""
    (tmp_path / "my_config.py").write_text(
        f"_base_ = ['{ROOT}/projects/detection/mmdet_configs/faster-rcnn_us-r50_fpn_1x_coco_tiny.py']\n")
    code = ("from mmengine.config import Config; from mmengine.registry import init_default_scope; "
            "from mmdet.registry import MODELS; import importlib; cfg = Config.fromfile('my_config.py'); "
            "[importlib.import_module(m) for m in cfg.custom_imports.imports]; init_default_scope('mmdet'); "
            "print(MODELS.get(cfg.model.backbone.type).__module__)")
    r = _run([sys.executable, "-c", code], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().endswith("us3l.mmdet.backbone")


@pytest.mark.parametrize("script", ENTRY_SCRIPTS, ids=lambda p: os.path.relpath(p, ROOT))
def test_entry_scripts_start_from_another_folder(script, tmp_path):
    """``python path/to/script.py --help`` from outside the repository, without PYTHONPATH: the scripts rely on
    the installed package (no ``sys.path`` edits needed)."""
    r = _run([sys.executable, script, "--help"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "usage:" in r.stdout


@pytest.mark.parametrize("name", CONSOLE_SCRIPTS)
def test_console_scripts(name, tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), name)
    assert os.path.isfile(exe), f"{name} is not installed: pip install -e . (setup.py console_scripts)"
    r = _run([exe, "--help"], tmp_path)
    assert r.returncode == 0 and "usage:" in r.stdout, r.stderr[-3000:]


def test_bad_input_exit_code_is_2_with_one_error_line(tmp_path):
    """The convention of us3l.cli: code 2 and ``error: ...`` as the last stderr line (argparse's usage code)."""
    env = dict(_installed_env(), PYTHONPATH=ROOT)  # this checkout's code (the installation may be another one)
    missing = str(tmp_path / "missing.pth")
    cases = [
        [os.path.join(ROOT, "tools", "eval_ssl.py"), missing, "--output", str(tmp_path / "o.json")],
        [os.path.join(ROOT, "tools", "export_static.py"), missing, str(tmp_path / "o.pth"), "--width", "0.5"],
        [os.path.join(ROOT, "tools", "convert_pretrain_to_d2.py"), missing, str(tmp_path / "o.pkl")],
        [os.path.join(ROOT, "tools", "pretrain.py"), "--config", str(tmp_path / "nope.yaml"), "--output-dir",
         str(tmp_path / "run")],
        [os.path.join(ROOT, "projects", "detection", "mmdet_test.py"),
         os.path.join(ROOT, "projects", "detection", "mmdet_configs", "faster-rcnn_us-r50_fpn_1x_coco_tiny.py"),
         missing],
    ]
    for cmd in cases:
        r = _run([sys.executable, *cmd], tmp_path, env)
        assert r.returncode == 2, (cmd, r.stderr[-2000:])
        lines = r.stderr.strip().splitlines()
        assert lines and lines[-1].startswith("error: ") and "Traceback" not in r.stderr, (cmd, r.stderr[-2000:])
    usage = _run([sys.executable, os.path.join(ROOT, "tools", "eval_ssl.py")], tmp_path, env)
    assert usage.returncode == 2 and "usage:" in usage.stderr
