"""Running the main job (tools/run_main.py) as a user does, for the Detectron2 and MMDetection job tests."""
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
