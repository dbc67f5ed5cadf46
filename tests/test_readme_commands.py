"""Every command the README shows runs, the way a user runs it: a subprocess, from a folder outside the
repository (paths to the repository's scripts and configs made absolute), on tiny inputs.

To add a README command: add an entry to ``COMMANDS`` keyed by the command as the README prints it (comments
and line continuations removed). Its value is either the tiny-input arguments appended to it (the last
occurrence of a ``key=value`` override wins, as in the tools), or ``covered_by(...)`` naming the test that runs
it because it cannot run here as printed (the test command itself, the full main job, real data and GPUs
scaled to tiny inputs there). ``test_every_readme_command_is_listed`` fails on a README command missing here.
"""
import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
READMES = ["README.md"]


class covered_by(str):
    """The test that runs this command (with tiny inputs) instead of this file."""


TINY_SSL = ["train.iterations=4", "train.checkpoint_every=2", "train.progress=false", "train.tensorboard=false",
            "data.dataset=imagefolder", "data.root={cls}", "data.batch_size=8", "method.proj_hidden=32",
            "method.proj_dim=16", "method.pred_hidden=16"]
TINY_EVAL = ["--dataset", "imagefolder", "--data-root", "{cls}", "--image-size", "16", "--probe-epochs", "2",
             "--batch-size", "16", "--calib-batches", "1"]

# README command -> tiny-input extra arguments (or covered_by); the order is the order a user runs them
COMMANDS = {
    "bash scripts/main.sh": covered_by("tests/test_main_job.py (tools/run_main.py, the job main.sh runs, tiny budget)"),
    "bash scripts/test.sh": covered_by("itself: it is the test command"),
    "source scripts/bootstrap.sh": covered_by("scripts/test.sh sources it; its proof runs from another folder"),
    "US3L_WITH_MMCV=1 source scripts/bootstrap.sh": covered_by("scripts/test.sh (exports US3L_WITH_MMCV=1)"),
    "python -c \"import us3l; print(us3l.__file__)\"": [],
    "python tools/pretrain.py --config configs/us3l_tiny_cpu_fast.yaml --output-dir runs/tiny": TINY_SSL,
    "python tools/pretrain.py --config configs/us3l_cifar100_r18.yaml --output-dir runs/c100 data.root=/data/cifar":
        covered_by("tests/test_pretrain_config.py (the config loads; CIFAR-100 itself is not downloaded)"),
    "python tools/pretrain.py ... --resume": covered_by("tests/test_pretrain_resume.py (exact resume, tiny run)"),
    "python tools/calibrate_bn.py runs/tiny/final.pth runs/tiny/calibrated.pth --widths 1.0 0.5 0.25 --data-root DIR "
    "--num-batches 20": ["--num-batches", "1", "--batch-size", "8", "--data-root", "{cls}", "--image-size", "16"],
    "python tools/eval_ssl.py runs/tiny/final.pth --widths 1.0 0.5 0.25 --output runs/tiny/eval.json": TINY_EVAL,
    "us3l-pretrain --config configs/us3l_tiny_cpu_fast.yaml --output-dir runs/tiny2": TINY_SSL,
    "torchrun --nproc_per_node 8 tools/pretrain.py --config configs/us3l_imagenet_r50.yaml --output-dir runs/r50 "
    "data.root=/data/imagenet": covered_by("tests/test_pretrain_ddp.py (torchrun, 2 CPU processes, tiny data)"),
    "python tools/calibrate_bn.py runs/r50/final.pth runs/r50/calibrated.pth --widths 1.0 0.75 0.5 0.25 "
    "--data-root /data/imagenet/train --num-batches 500":
        covered_by("this file: the same tool on the tiny run above"),
    "python tools/convert_pretrain_to_d2.py runs/r50/calibrated.pth runs/r50/us3l_r50.pkl":
        covered_by("tests/test_d2_checkpoint.py and tests/test_convert_d2_mmdet.py (a real R50 backbone)"),
    "for w in 1.0 0.75 0.5 0.25 do python projects/segmentation/train_net.py --num-gpus 8 --config-file "
    "projects/segmentation/configs/mask_rcnn_US-R50_FPN_1x.yaml MODEL.WEIGHTS runs/r50/us3l_r50.pkl "
    "MODEL.US3L.WIDTH_MULT $w OUTPUT_DIR runs/mask_w$w done":
        covered_by("tests/test_d2_train_eval.py, tests/test_d2_cpu_launch.py (the same entry point, tiny config)"),
    "python tools/pick_width.py model_calibrated.pth --config CFG --results eval/results.json --latency-ms 300 "
    "--runtime onnxruntime --threads 1 --export deploy/plain.pth --onnx":
        covered_by("tests/test_pick_width.py (a real tiny checkpoint: GFLOPs and onnxruntime latency budgets)"),
    "python tools/export_detector.py model_calibrated.pth plain_w0.50.pth --width 0.5 --config CFG --onnx "
    "plain_w0.50.onnx": covered_by("tests/test_d2_onnx.py and tests/test_mmdet_onnx.py (export_detector --onnx)"),
}


def readme_commands(path: str) -> list[str]:
    """Shell commands in the README's ``bash`` blocks: comments dropped, continuation lines and loops joined."""
    text = open(os.path.join(ROOT, path)).read()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        pending = ""
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if not line or line.startswith("#"):
                continue
            pending = f"{pending} {line[:-1].strip() if line.endswith(chr(92)) else line}".strip()
            if line.endswith("\\") or (pending.startswith("for ") and not re.search(r"\bdone$", pending)):
                continue
            commands.append(re.sub(r"\s*;\s*", " ", pending) if pending.startswith("for ") else pending)
            pending = ""
    return commands


def test_every_readme_command_is_listed():
    shown = [c for path in READMES for c in readme_commands(path)]
    assert shown, "no bash blocks found in the README"
    unlisted = [c for c in shown if c not in COMMANDS]
    assert not unlisted, f"README commands no test runs (add them to COMMANDS in {__file__}): {unlisted}"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_cls):
    """A folder outside the repository where the README's relative output paths (runs/...) land."""
    return tmp_path_factory.mktemp("user"), tiny_cls


def _absolute(arg: str) -> str:
    """Repository paths (tools/, configs/, projects/, bench/) as a user standing elsewhere would type them."""
    return os.path.join(ROOT, arg) if arg.split("/", 1)[0] in ("tools", "configs", "projects", "bench", "scripts") \
        else arg


RUNNABLE = [(c, extra) for c, extra in COMMANDS.items() if not isinstance(extra, covered_by)]


@pytest.mark.parametrize("command, extra", RUNNABLE, ids=[c[:60] for c, _ in RUNNABLE])
def test_readme_command_runs(command, extra, workspace):
    cwd, cls = workspace
    argv = [_absolute(a) for a in shlex.split(command)]
    argv += [a.format(cls=cls["root"]) for a in extra]
    if argv[0] == "python":
        argv[0] = sys.executable
    else:  # a console script of the installation
        argv[0] = os.path.join(os.path.dirname(sys.executable), argv[0])
    env = dict(os.environ, OMP_NUM_THREADS="1", US3L_DATASETS=str(cwd / "datasets"))
    r = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"{shlex.join(argv)}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    outputs = [a for a in shlex.split(command) if a.startswith("runs/")]
    for out in outputs:
        assert (cwd / out).exists(), f"{out} was not written by {command}"
