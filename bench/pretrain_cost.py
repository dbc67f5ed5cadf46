#!/usr/bin/env python
"""Pre-training cost of dynamic sampling vs always-sandwich: step time, passes, images/s, peak memory.

Both runs use the same config, seed, data and iteration count; only ``sampling.dynamic`` differs. By default
they run at the same time, side by side (one thread each), so that load from other processes on the machine
hits both alike. Writes a JSON and a markdown table.

  python bench/pretrain_cost.py --iterations 80 --output bench/pretrain_cost.json
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile

from us3l.ssl.width_sampling import WidthSampler

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def flop_units(widths_per_iter, teacher: bool) -> float:
    """Analytic compute in max-width fwd+bwd units: a width-w pass costs ~w^2; the teacher adds ~1/3."""
    return sum(sum(w * w for w in ws) + (1 / 3 if teacher else 0) for ws in widths_per_iter)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=80)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--cifar-stem", action="store_true")
    ap.add_argument("--method", default="us3l")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sequential", action="store_true", help="run one after the other instead of side by side")
    ap.add_argument("--output", default=os.path.join(ROOT, "bench", "pretrain_cost.json"))
    args = ap.parse_args(argv)
    work = tempfile.mkdtemp(prefix="us3l_bench_")
    atexit.register(shutil.rmtree, work, True)  # checkpoints and data of every run
    # a private dataset folder: the shared default one may hold another run's (differently sized) set, which
    # regenerating here would replace under that run's feet
    env = dict(os.environ, US3L_DATASETS=os.path.join(work, "data"))
    common = [f"method.name={args.method}", "model.arch=resnet18", f"model.cifar_stem={str(args.cifar_stem).lower()}",
              f"data.image_size={args.image_size}", f"data.batch_size={args.batch_size}",
              f"train.iterations={args.iterations}", "train.checkpoint_every=0", "train.progress=false",
              "train.tensorboard=false", f"train.num_threads={args.threads}", "sampling.num_widths=3"]
    # generate the embedded dataset once (the tiny config's parameters) before two runs race for it
    subprocess.run([sys.executable, "-c", "from us3l.data.datasets import prepare_embedded; "
                    "prepare_embedded(None, 64, 32, 32, 0)"], env=env, check=True)
    procs = {}
    for name, dynamic in (("always_sandwich", False), ("dynamic", True)):
        cmd = [sys.executable, os.path.join(ROOT, "tools", "pretrain.py"), "--config",
               os.path.join(ROOT, "configs", "us3l_tiny_cpu.yaml"), "--output-dir", os.path.join(work, name),
               *common, f"sampling.dynamic={str(dynamic).lower()}"]
        procs[name] = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if args.sequential:
            procs[name].wait()
    for p in procs.values():
        _, err = p.communicate()
        if p.returncode != 0:
            print(err[-3000:], file=sys.stderr)
            return 1
    res = {}
    for name, dynamic in (("always_sandwich", False), ("dynamic", True)):
        s = json.load(open(os.path.join(work, name, "summary.json")))
        sampler = WidthSampler((0.25, 1.0), 3, dynamic, 4, 0)
        widths = [sampler(i, args.iterations) for i in range(args.iterations)]
        res[name] = {"step_time_s": s["step_time_s"], "wall_s": s["wall_s"], "passes": s["forward_backward_passes"],
                     "images_per_s": s["images_per_s"], "peak_rss_mb": s["peak_rss_mb"],
                     "peak_cuda_mb": s["peak_cuda_mb"],
                     "flop_units": flop_units(widths, args.method in ("us3l", "byol_noaux"))}
    d, a = res["dynamic"], res["always_sandwich"]
    ratios = {"step_time": d["step_time_s"] / a["step_time_s"], "passes": d["passes"] / a["passes"],
              "analytic_flops": d["flop_units"] / a["flop_units"]}
    out = {"config": vars(args), "runs": res, "ratio_dynamic_over_sandwich": ratios}
    with open(args.output, "w") as f:
        json.dump(out, f, indent=1)
    lines = [f"{args.method}, ResNet-18 ({'CIFAR' if args.cifar_stem else 'ImageNet'} stem), {args.image_size} px, "
             f"batch {args.batch_size}, {args.iterations} iterations, {args.threads} thread(s) each, "
             f"{'sequential' if args.sequential else 'side by side'}", "",
             "| run | step time (s) | fwd/bwd passes | images/s | peak RSS (MB) | analytic FLOPs (max-pass units) |",
             "|---|---|---|---|---|---|"]
    for name, r in res.items():
        lines.append(f"| {name} | {r['step_time_s']:.1f} | {r['passes']} | {r['images_per_s']:.1f} | "
                     f"{r['peak_rss_mb']:.0f} | {r['flop_units']:.1f} |")
    lines += ["", f"ratio dynamic / always-sandwich: step time **{ratios['step_time']:.3f}**, passes "
              f"{ratios['passes']:.3f}, analytic FLOPs {ratios['analytic_flops']:.3f}"]
    table = "\n".join(lines) + "\n"
    with open(os.path.splitext(args.output)[0] + ".table.md", "w") as f:
        f.write(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
