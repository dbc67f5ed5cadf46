"""A refused command writes nothing, and an output path whose parent is a file is one clear error line (issue 27).

Every command-line tool that writes, run as a user runs it, twice:

(a) its output's parent is a regular file: exit 2, exactly one stderr line ``error: ...`` naming that path, no
    traceback, and the folder that holds everything byte-for-byte as before. The inputs given are missing, so the
    line naming the OUTPUT also proves the output is checked first, before any input is read or work is done
    (``tools/eval_ssl.py`` used to evaluate everything and then fail in ``os.makedirs``);
(b) a bad input (missing or corrupt checkpoint, width out of range, nonexistent config or data...) into an output
    folder that already holds a sentinel file: exit 2, one ``error:`` line, and the folder unchanged (no log.txt,
    config.yaml, metrics, tb/, stages.json left behind).

Case (a) runs every tool as a subprocess (``python tools/X.py ...``); case (b) runs the tools that are ``main(argv)``
front ends in this process (``runpy``, the script's own ``__main__`` block: the same code path minus one Python
start-up each) and the trainers and pipelines as subprocesses. Every refusal happens before a model is built.
"""
from __future__ import annotations

import contextlib
import io
import os
import runpy
import subprocess
import sys
import traceback

import pytest

from us3l.errors import OutputPathError, US3LError
from us3l.output_paths import check_output_dir, check_output_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DET, SEG = "projects/detection", "projects/segmentation"
D2_SLIM = f"{SEG}/configs/mask_rcnn_US-R50_FPN_slimmable_tiny.yaml"
D2_FASTER = f"{DET}/configs/faster_rcnn_US-R50_FPN_tiny.yaml"
D2_MASK = f"{SEG}/configs/mask_rcnn_US-R50_FPN_tiny.yaml"
LAZY = f"{SEG}/lazy_configs/mask_rcnn_US-R50_FPN_slimmable_tiny.py"
MM_FASTER = f"{DET}/mmdet_configs/faster-rcnn_us-r50_fpn_1x_coco_tiny.py"
MM_MASK = f"{SEG}/mmdet_configs/mask-rcnn_us-r50_fpn_1x_coco_tiny.py"
PRETRAIN_CFG = "configs/us3l_tiny_cpu.yaml"
# the frameworks' command lines and the staged pipelines always run as subprocesses
SUBPROCESS_ONLY = ("tools/run_main.py", "tools/transfer_table.py", f"{DET}/train_net.py", f"{SEG}/train_net.py",
                   f"{SEG}/lazy_train_net.py", f"{DET}/mmdet_train.py", f"{SEG}/mmdet_train.py", f"{DET}/mmdet_test.py",
                   f"{SEG}/mmdet_test.py")


def repo(path: str) -> str:
    return os.path.join(ROOT, path)


class Paths:
    """The temporary folder of one case: ``blocker`` (a regular file), ``out/`` (holding ``sentinel.txt``),
    ``datasets/`` ($US3L_DATASETS, empty), ``corrupt.pth`` (bytes that are no checkpoint) and names that do not
    exist (``missing*``)."""

    def __init__(self, root):
        self.root = root
        self.blocker = root / "blocker"
        self.blocker.write_text("a regular file where a folder would be\n")
        self.out = root / "out"
        self.out.mkdir()
        (self.out / "sentinel.txt").write_text("the user's own file\n")
        self.datasets = root / "datasets"
        self.datasets.mkdir()
        self.corrupt = root / "corrupt.pth"
        self.corrupt.write_bytes(b"this is not a checkpoint\x00\x01\x02" * 8)
        self.missing = root / "missing.pth"


# tool -> (a) argv builder(paths) -> (argv, the output path the error must name)
PARENT_IS_FILE = {
    "tools/calibrate_bn.py": lambda p: ([p.missing, p.blocker / "cal.pth", "--widths", "0.5", "--data-root",
                                         p.datasets, "--num-batches", "1"], p.blocker / "cal.pth"),
    "tools/calibrate_detector.py": lambda p: ([p.missing, p.blocker / "cal.pth", "--config", repo(D2_SLIM),
                                               "--widths", "0.5", "--num-batches", "1"], p.blocker / "cal.pth"),
    "tools/combine_calibrated.py": lambda p: ([p.missing, p.blocker / "combined.pth"], p.blocker / "combined.pth"),
    "tools/convert_pretrain_to_d2.py": lambda p: ([p.missing, p.blocker / "b.pkl"], p.blocker / "b.pkl"),
    "tools/convert_pretrain_to_mmdet.py": lambda p: ([p.missing, p.blocker / "b.pth"], p.blocker / "b.pth"),
    "tools/convert_d2_to_mmdet.py": lambda p: ([p.missing, p.blocker / "d.pth"], p.blocker / "d.pth"),
    "tools/convert_mmdet_to_d2.py": lambda p: ([p.missing, p.blocker / "d.pkl"], p.blocker / "d.pkl"),
    "tools/demo.py": lambda p: ([p.missing, p.root / "missing.png", "--config", repo(D2_SLIM), "--output",
                                 p.blocker / "grid.png"], p.blocker / "grid.png"),
    "tools/eval_ssl.py": lambda p: ([p.missing, "--output", p.blocker / "eval.json"], p.blocker / "eval.json"),
    "tools/eval_widths.py": lambda p: ([p.missing, "--widths", "0.5", "--output-dir", p.blocker / "eval"],
                                       p.blocker / "eval"),
    "tools/export_detector.py": lambda p: ([p.missing, p.blocker / "plain.pth", "--width", "0.5", "--config",
                                            repo(D2_SLIM)], p.blocker / "plain.pth"),
    "tools/export_static.py": lambda p: ([p.missing, p.blocker / "static.pth", "--width", "0.5"],
                                         p.blocker / "static.pth"),
    "tools/make_embedded_dataset.py": lambda p: (["--root", p.blocker / "set", "--num-train", "2", "--num-val", "1"],
                                                 p.blocker / "set"),
    "tools/make_random_backbone.py": lambda p: ([p.blocker / "random.pth"], p.blocker / "random.pth"),
    "tools/pick_width.py": lambda p: ([p.missing, "--config", repo(MM_FASTER), "--gflops", "1", "--export",
                                       p.blocker / "plain.pth"], p.blocker / "plain.pth"),
    "tools/pretrain.py": lambda p: (["--config", repo(PRETRAIN_CFG), "--output-dir", p.blocker / "run"],
                                    p.blocker / "run"),
    "tools/profile_widths.py": lambda p: (["--arch", "resnet18", "--widths", "0.5", "--runs", "0", "--image-size",
                                           "32", "--output", p.blocker / "cost.json"], p.blocker / "cost.json"),
    "tools/results_table.py": lambda p: ([p.root / "missing.json", "--out-dir", p.blocker / "table"],
                                         p.blocker / "table"),
    # ssl_table writes OUT/table1.{md,png} into the folder it reads
    "tools/ssl_table.py": lambda p: ([p.blocker, "us3l"], p.blocker / "table1.md"),
    "tools/run_main.py": lambda p: (["--quick", "--output", p.blocker / "main"], p.blocker / "main"),
    "tools/transfer_table.py": lambda p: ([p.blocker / "transfer", "--quick"], p.blocker / "transfer"),
    f"{DET}/train_net.py": lambda p: (["--config-file", repo(D2_FASTER), "OUTPUT_DIR", p.blocker / "run"],
                                      p.blocker / "run"),
    f"{SEG}/train_net.py": lambda p: (["--config-file", repo(D2_MASK), "--eval-only", "OUTPUT_DIR",
                                       p.blocker / "run"], p.blocker / "run"),
    f"{SEG}/lazy_train_net.py": lambda p: (["--config-file", repo(LAZY), f"train.output_dir={p.blocker / 'run'}"],
                                           p.blocker / "run"),
    f"{DET}/mmdet_train.py": lambda p: ([repo(MM_FASTER), "--work-dir", p.blocker / "work"], p.blocker / "work"),
    f"{SEG}/mmdet_train.py": lambda p: ([repo(MM_MASK), "--width", "0.5", "--work-dir", p.blocker / "work"],
                                        p.blocker / "work"),
    f"{DET}/mmdet_test.py": lambda p: ([repo(MM_FASTER), p.missing, "--work-dir", p.blocker / "work"],
                                       p.blocker / "work"),
    f"{SEG}/mmdet_test.py": lambda p: ([repo(MM_MASK), p.missing, "--width", "0.5", "--work-dir",
                                        p.blocker / "work"], p.blocker / "work"),
}


def _results_not_ours(p):
    path = p.root / "other.json"
    path.write_text('{"format": "something.else/1", "rows": []}')
    return path


def _corrupt_eval_json(p):
    (p.out / "us3l.eval.json").write_text("{ not json")
    return p.out


# tool -> (b) argv builder(paths): a bad input, every output inside p.out (which holds the sentinel)
BAD_INPUT = {
    "tools/calibrate_bn.py": lambda p: [p.corrupt, p.out / "cal.pth", "--widths", "0.5", "--data-root", p.datasets,
                                        "--num-batches", "1"],
    "tools/calibrate_detector.py": lambda p: [p.missing, p.out / "cal.pth", "--config", p.root / "missing.yaml",
                                              "--widths", "0.5", "--num-batches", "1"],
    "tools/combine_calibrated.py": lambda p: [p.corrupt, p.out / "combined.pth"],
    "tools/convert_pretrain_to_d2.py": lambda p: [p.corrupt, p.out / "b.pkl"],
    "tools/convert_pretrain_to_mmdet.py": lambda p: [p.missing, p.out / "b.pth"],
    "tools/convert_d2_to_mmdet.py": lambda p: [p.corrupt, p.out / "d.pth"],
    "tools/convert_mmdet_to_d2.py": lambda p: [p.missing, p.out / "d.pkl"],
    "tools/demo.py": lambda p: [p.missing, p.root / "missing.png", "--config", repo(D2_SLIM), "--output",
                                p.out / "grid.png"],
    "tools/eval_ssl.py": lambda p: [p.corrupt, "--output", p.out / "eval.json"],
    # per-width mode (a {width} template): its weights are looked up before any evaluation runs
    "tools/eval_widths.py": lambda p: [p.root / "w{width}" / "model_final.pth", "--widths", "0.5", "--output-dir",
                                       p.out],
    "tools/export_detector.py": lambda p: [p.missing, p.out / "plain.pth", "--width", "0.5", "--config",
                                           p.root / "missing.py"],
    "tools/export_static.py": lambda p: [p.corrupt, p.out / "static.pth", "--width", "0.5"],
    "tools/make_embedded_dataset.py": lambda p: ["--root", p.out / "set", "--num-train", "0"],
    "tools/make_random_backbone.py": lambda p: [p.out / "random.pth", "--arch", "resnet7"],
    # --results of another format: refused before any detector is built or exported
    "tools/pick_width.py": lambda p: [p.corrupt, "--config", repo(MM_FASTER), "--gflops", "1", "--results",
                                      _results_not_ours(p), "--export", p.out / "plain.pth", "--onnx"],
    "tools/pretrain.py": lambda p: ["--config", repo(PRETRAIN_CFG), "--output-dir", p.out, "data.dataset=imagefolder",
                                    f"data.root={p.root / 'no_images'}"],
    "tools/profile_widths.py": lambda p: ["--arch", "resnet18", "--widths", "5", "--runs", "0", "--image-size", "32",
                                          "--output", p.out / "cost.json"],
    "tools/results_table.py": lambda p: [_results_not_ours(p), "--out-dir", p.out],
    "tools/ssl_table.py": lambda p: [_corrupt_eval_json(p), "us3l"],
    "tools/run_main.py": lambda p: ["--quick", "--output", p.out, "--pretrained", p.missing],
    "tools/transfer_table.py": lambda p: [p.out, "--quick", "--pretrained", f"us3l={p.missing}"],
    f"{DET}/train_net.py": lambda p: ["--config-file", repo(D2_FASTER), "MODEL.WEIGHTS", p.root / "missing.pkl",
                                      "OUTPUT_DIR", p.out],
    f"{SEG}/train_net.py": lambda p: ["--config-file", p.root / "missing.yaml", "OUTPUT_DIR", p.out],
    f"{SEG}/lazy_train_net.py": lambda p: ["--config-file", repo(LAZY), "--eval-only",
                                           f"train.init_checkpoint={p.missing}", f"train.output_dir={p.out}"],
    f"{DET}/mmdet_train.py": lambda p: [repo(MM_FASTER), "--work-dir", p.out, "--cfg-options",
                                        f"model.backbone.init_cfg.checkpoint={p.missing}"],
    f"{SEG}/mmdet_train.py": lambda p: [repo(MM_MASK), "--width", "5", "--work-dir", p.out],
    f"{DET}/mmdet_test.py": lambda p: [repo(MM_FASTER), p.missing, "--work-dir", p.out],
    f"{SEG}/mmdet_test.py": lambda p: [repo(MM_MASK), p.corrupt, "--width", "0.5", "--work-dir", p.out],
}


def snapshot(root) -> dict:
    """Relative path -> (kind, size, mtime) of everything under ``root`` (the folder itself included)."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in ["", *dirs, *files]:
            path = os.path.join(folder, name) if name else folder
            st = os.lstat(path)
            kind = "dir" if os.path.isdir(path) else "file"
            found[os.path.relpath(path, root)] = (kind, None if kind == "dir" else st.st_size, st.st_mtime_ns)
    return found


def changes(before: dict, after: dict) -> list[str]:
    return ([f"added {k}" for k in sorted(after.keys() - before.keys())]
            + [f"removed {k}" for k in sorted(before.keys() - after.keys())]
            + [f"changed {k}" for k in sorted(before.keys() & after.keys()) if before[k] != after[k]])


def run_as_user(tool: str, argv: list, paths: Paths, monkeypatch, in_process: bool) -> tuple[int, str]:
    """(exit code, stderr) of ``python TOOL ARGV`` from the temporary folder, with $US3L_DATASETS there."""
    argv = [str(a) for a in argv]
    if not in_process:
        env = dict(os.environ, PYTHONPATH=ROOT, US3L_DATASETS=str(paths.datasets), OMP_NUM_THREADS="1")
        r = subprocess.run([sys.executable, repo(tool), *argv], cwd=paths.root, env=env, capture_output=True,
                           text=True, timeout=240)
        return r.returncode, r.stderr
    monkeypatch.setenv("US3L_DATASETS", str(paths.datasets))
    monkeypatch.chdir(paths.root)
    monkeypatch.setattr(sys, "argv", [repo(tool), *argv])
    err, rc = io.StringIO(), 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            runpy.run_path(repo(tool), run_name="__main__")
        except SystemExit as e:
            if isinstance(e.code, str):
                print(e.code, file=sys.stderr)
            rc = 1 if isinstance(e.code, str) else (e.code or 0)
        except BaseException:  # what Python would do: the traceback, exit 1
            traceback.print_exc(file=sys.stderr)
            rc = 1
    return rc, err.getvalue()


def assert_one_error_line(rc: int, stderr: str, names: str | None = None) -> str:
    lines = stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert rc == 2 and "Traceback" not in stderr and len(errors) == 1 and lines[-1] == errors[0], \
        f"exit {rc}, stderr:\n{stderr[-3000:]}"
    if names is not None:
        assert names in errors[0], f"the error line does not name {names}: {errors[0]}"
    return errors[0]


@pytest.mark.parametrize("tool", sorted(PARENT_IS_FILE))
def test_an_output_whose_parent_is_a_file_is_one_error_line(tool, tmp_path, monkeypatch):
    paths = Paths(tmp_path)
    argv, output = PARENT_IS_FILE[tool](paths)
    before = snapshot(tmp_path)
    rc, stderr = run_as_user(tool, argv, paths, monkeypatch, in_process=False)
    line = assert_one_error_line(rc, stderr, names=str(output))
    # the checked refusal, not the OS error of a write that was tried (``[Errno 20] Not a directory: ...``)
    assert f"{paths.blocker} is a file" in line and "Errno" not in line, line
    assert changes(before, snapshot(tmp_path)) == [], stderr[-2000:]


@pytest.mark.parametrize("tool", sorted(BAD_INPUT))
def test_a_refused_input_leaves_the_output_folder_as_it_was(tool, tmp_path, monkeypatch):
    paths = Paths(tmp_path)
    argv = BAD_INPUT[tool](paths)
    before = snapshot(tmp_path)
    rc, stderr = run_as_user(tool, argv, paths, monkeypatch, in_process=tool not in SUBPROCESS_ONLY)
    assert_one_error_line(rc, stderr)
    assert changes(before, snapshot(tmp_path)) == [], stderr[-2000:]


@pytest.mark.parametrize("tool, argv", [
    (f"{DET}/train_net.py", lambda p: ["--config-file", repo(D2_FASTER), "OUTPUT_DIR", p.out]),
    (f"{DET}/mmdet_train.py", lambda p: [repo(MM_FASTER), "--work-dir", p.out, "--cfg-options",
                                         "model.backbone.init_cfg=None"]),
], ids=["d2", "mmdet"])
def test_a_missing_dataset_leaves_the_output_folder_as_it_was(tool, argv, tmp_path, monkeypatch):
    """$US3L_DATASETS without the embedded set: refused before Detectron2's ``default_setup`` writes config.yaml and
    log.txt, and before mmengine's Runner makes its timestamped log folder."""
    paths = Paths(tmp_path)
    before = snapshot(tmp_path)
    rc, stderr = run_as_user(tool, argv(paths), paths, monkeypatch, in_process=False)
    assert "us3l_shapes" in assert_one_error_line(rc, stderr)
    assert changes(before, snapshot(tmp_path)) == [], stderr[-2000:]


def test_a_truncated_pickle_as_model_weights_leaves_the_output_folder_as_it_was(tmp_path, monkeypatch):
    """A Detectron2 ``.pkl`` cut short (a download that stopped): a pickle has no directory to check, so it is read
    before ``default_setup`` writes config.yaml and log.txt; the error names the file."""
    import pickle

    import numpy as np

    paths = Paths(tmp_path)
    weights = tmp_path / "backbone.pkl"
    data = pickle.dumps({"model": {"stem.conv1.weight": np.ones((64, 3, 7, 7), np.float32)}, "__author__": "user"},
                        protocol=4)
    weights.write_bytes(data[: len(data) // 2])
    before = snapshot(tmp_path)
    rc, stderr = run_as_user(f"{DET}/train_net.py", ["--config-file", repo(D2_FASTER), "MODEL.WEIGHTS", weights,
                                                     "OUTPUT_DIR", paths.out], paths, monkeypatch, in_process=False)
    line = assert_one_error_line(rc, stderr, names=str(weights))
    assert "corrupt or truncated" in line, line
    assert changes(before, snapshot(tmp_path)) == [], stderr[-2000:]


def test_every_writing_tool_is_swept():
    """A new tool under tools/ (or a framework entry point) must join both sweeps."""
    scripts = {os.path.relpath(p, ROOT) for folder in ("tools", DET, SEG)
               for p in (os.path.join(ROOT, folder, f) for f in os.listdir(repo(folder))) if p.endswith(".py")}
    assert scripts == set(PARENT_IS_FILE) == set(BAD_INPUT)


# ------------------------------------------------------------------------- the checks themselves, nothing created
def test_the_checks_refuse_without_creating_anything(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    (tmp_path / "folder").mkdir()
    src = tmp_path / "src.pth"
    src.write_text("weights")
    before = snapshot(tmp_path)
    cases = [
        (check_output_file, blocker / "a" / "b.pth", {}, f"{blocker} is a file"),
        (check_output_dir, blocker / "run", {}, f"{blocker} is a file"),
        (check_output_file, tmp_path / "folder", {}, "is a folder"),
        (check_output_dir, blocker, {}, "is a file"),
        (check_output_file, src, {"inputs": [src]}, "would overwrite the input"),
        (check_output_dir, tmp_path / "folder", {"inputs": [tmp_path / "folder"]}, "would overwrite the input"),
        (check_output_file, "", {}, "empty path"),
    ]
    for check, path, kw, message in cases:
        with pytest.raises(OutputPathError, match=message) as e:
            check(str(path), "DST", **kw)
        assert isinstance(e.value, US3LError) and isinstance(e.value, ValueError)
        assert "\n" not in str(e.value) and (str(path) in str(e.value) or not str(path))
    assert check_output_file(str(tmp_path / "new" / "deeper" / "x.pth")) == str(tmp_path / "new" / "deeper" / "x.pth")
    assert check_output_dir(str(tmp_path / "folder")) == str(tmp_path / "folder")
    assert changes(before, snapshot(tmp_path)) == []


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write into any folder")
def test_an_unwritable_folder_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(OutputPathError, match="not writable"):
            check_output_file(str(locked / "sub" / "x.pth"))
        with pytest.raises(OutputPathError, match="not writable"):
            check_output_dir(str(locked))
    finally:
        locked.chmod(0o700)
