#!/usr/bin/env python
"""Throughput of the pre-training tool (``tools/pretrain.py``'s loop) vs a minimal loop doing the same work.

  PYTHONPATH=$PWD OMP_NUM_THREADS=1 python bench/bench_pretrain_throughput.py --rounds 6 --iterations 6

Both sides build the method from ONE config (``configs/us3l_tiny_cpu.yaml`` + the overrides below: same
model, heads, batch, widths per iteration, optimizer, per-width steps, group regularization, EMA teacher).
The minimal loop, written here, feeds one fixed pair of random view tensors and does nothing else: no data
loading or augmentation, logging, collapse monitor, progress bar or checkpoint. The tool's side runs
:func:`us3l.engine.trainer.pretrain` (what ``tools/pretrain.py`` calls) in this process, on the generated
embedded dataset. Rounds alternate which side goes first; the ratio tool / minimal is taken per round and
the table gives its median. Target: >= 0.95.

Two throughputs of the tool are reported: "logged" = its ``summary.json`` ``images_per_s`` (time inside
the iteration, batch already loaded) and "end-to-end" = images / ``wall_s`` (includes loading and
augmenting each batch in the main process, and saving ``final.pth`` once).
"""
from __future__ import annotations

import argparse
import atexit
import os
import shutil
import statistics
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_config(args):
    from us3l.engine.config import load_config

    overrides = [f"model.arch={args.arch}", "model.cifar_stem=false", f"data.image_size={args.image_size}",
                 f"data.batch_size={args.batch_size}", f"train.iterations={args.iterations}",
                 "train.checkpoint_every=0", "train.progress=false", "train.tensorboard=false",
                 f"train.num_threads={args.threads}", f"data.num_workers={args.num_workers}",
                 f"train.log_every={args.iterations}"]
    return load_config(os.path.join(ROOT, "configs", "us3l_tiny_cpu.yaml"), overrides), overrides


def minimal_loop(cfg) -> float:
    """Images/s of a bare loop over the same method, widths, optimizer and regularization."""
    from us3l.ssl.group_reg import GroupRegularizer, alpha_at
    from us3l.ssl.methods import build_method
    from us3l.ssl.width_sampling import WidthSampler
    from us3l.width import set_width

    torch.manual_seed(cfg.train.seed)
    method = build_method(cfg).train()
    params = [p for p in method.online.parameters() if p.requires_grad]
    wd = 0.0 if cfg.group_reg.enabled else cfg.optim.weight_decay
    opt = torch.optim.SGD(params, lr=cfg.optim.lr, momentum=cfg.optim.momentum, weight_decay=wd)
    sampler = WidthSampler(tuple(cfg.model.width_range), cfg.sampling.num_widths, cfg.sampling.dynamic,
                           cfg.sampling.num_stages, cfg.train.seed)
    greg = (GroupRegularizer(cfg.group_reg.lam, cfg.group_reg.alpha, cfg.group_reg.bins, cfg.group_reg.type)
            if cfg.group_reg.enabled else None)
    b, s, total = cfg.data.batch_size, cfg.data.image_size, cfg.train.iterations
    g = torch.Generator().manual_seed(0)
    views = (torch.randn(b, 3, s, s, generator=g), torch.randn(b, 3, s, s, generator=g))
    per_width = cfg.sampling.step_mode == "per_width"
    t0 = time.perf_counter()
    for it in range(total):
        ctx = method.begin_iteration(it, total)
        alpha_t = (alpha_at(cfg.group_reg.alpha, cfg.group_reg.type, it, 0, int(round(cfg.group_reg.ramp_end * total)))
                   if greg else 0.0)  # the tiny config has no group-reg warm-up
        if not per_width:
            opt.zero_grad(set_to_none=True)
        for k, w in enumerate(sampler(it, total)):
            if per_width:
                opt.zero_grad(set_to_none=False)  # the tool's rule: unused heads keep their momentum step
            set_width(method.online, w)
            loss, _ = method.width_loss(views, ctx)
            if greg is not None:
                loss = loss + greg.penalty(method.reg_parameters(is_max=k == 0), alpha_t)
            loss.backward()
            if per_width:
                opt.step()
        if not per_width:
            opt.step()
        set_width(method.online, 1.0)
    return b * total / (time.perf_counter() - t0)


def tool_run(cfg, out_dir: str) -> tuple[float, float]:
    from us3l.engine.trainer import pretrain

    summary = pretrain(cfg, out_dir)
    images = summary["iterations_done"] * cfg.data.batch_size
    return summary["images_per_s"], images / summary["wall_s"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--iterations", type=int, default=6, help="iterations per run (each side, each round)")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--note", default="")
    p.add_argument("--output", default="bench/pretrain_throughput.md")
    args = p.parse_args(argv)
    work = tempfile.mkdtemp(prefix="us3l_throughput_")
    atexit.register(shutil.rmtree, work, True)  # its runs write ~0.5-1.5 GB of checkpoints and data
    os.environ["US3L_DATASETS"] = os.path.join(work, "data")  # a private dataset folder (see pretrain_cost.py)
    cfg, overrides = build_config(args)
    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()[0]
    logged, e2e, minimal = [], [], []
    tool_run(build_config(args)[0], os.path.join(work, "warmup"))  # generates the dataset, warms caches
    for r in range(args.rounds):
        sides = ["tool", "minimal"] if r % 2 == 0 else ["minimal", "tool"]
        for side in sides:
            if side == "tool":
                a, b = tool_run(cfg, os.path.join(work, f"run{r}"))
                logged.append(a)
                e2e.append(b)
            else:
                minimal.append(minimal_loop(cfg))
    load1 = os.getloadavg()[0]

    def med_ratio(xs):
        ratios = [x / m for x, m in zip(xs, minimal)]
        q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
        return q[1], q[0], q[2]

    from us3l.profiling import bench_command, machine_summary, write_report

    cmd = bench_command()
    lines = ["# Pre-training throughput: the tool's loop vs a minimal loop (same model, batch, widths)", "",
             f"Command: `{cmd}`  ",
             f"Config: `configs/us3l_tiny_cpu.yaml` + `{' '.join(overrides)}`  ",
             f"CPU: {machine_summary()}, {args.threads} "
             f"thread(s) on both sides, {args.rounds} rounds x {args.iterations} iterations, order alternated; "
             f"load average {load0:.1f} at start, {load1:.1f} at end. {args.note}", "",
             "| measure | tool images/s (median) | minimal images/s (median) | ratio tool / minimal, median "
             "[IQR] | target >= 0.95 met |", "|---|---|---|---|---|"]
    for name, xs in (("logged (summary.json images_per_s)", logged), ("end-to-end (images / wall_s)", e2e)):
        m, lo, hi = med_ratio(xs)
        lines.append(f"| {name} | {statistics.median(xs):.2f} | {statistics.median(minimal):.2f} | "
                     f"{m:.3f} [{lo:.3f}, {hi:.3f}] | {'yes' if m >= 0.95 else 'no'} |")
    write_report(lines, args.output)


if __name__ == "__main__":
    main()
