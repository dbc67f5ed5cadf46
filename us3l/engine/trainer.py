"""The pre-training loop: widths per iteration, per-width optimizer steps or accumulation, checkpoints, resume.

One iteration: widths from the sampler (max first); for each width the method's loss (+ group
regularization), backward, and either an optimizer step per width (the reference code) or one step after
all widths (US-Nets' gradient accumulation). Everything random is a function of the seed and the iteration
(see :mod:`us3l.data.datasets`, :mod:`us3l.ssl.width_sampling`), so a run stopped anywhere and resumed from
its checkpoint ends bitwise equal to an uninterrupted run on CPU.
"""
from __future__ import annotations

import json
import math
import os
import random
import resource
import signal
import threading
import time

import numpy as np
import torch
import torch.utils.data as tud
from tqdm import tqdm

from ..checkpoint.report import CheckpointError
from ..data.datasets import ResumableBatchSampler, TwoViewDataset, build_dataset
from ..data.transforms import ssl_transform
from ..ssl.group_reg import GroupRegularizer, alpha_at
from ..ssl.methods import build_method
from ..ssl.width_sampling import WidthSampler
from ..width import set_width
from . import distributed as du
from .checkpointing import load_training_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import ConfigError, PretrainConfig, config_from_dict, resume_differences
from .logging import CollapseMonitor, ScalarWriter, get_logger


def lr_at(cfg: PretrainConfig, it: int, total: int) -> float:
    base, warm = cfg.optim.lr, cfg.optim.warmup_iters
    if warm > 0 and it < warm:
        return base * (it + 1) / warm
    if cfg.optim.schedule == "constant":
        return base
    span = max(total - warm, 1)
    return base * 0.5 * (1.0 + math.cos(math.pi * (it - warm) / span))


def slot_names(widths: list[float]) -> list[str]:
    """Per-width log names stable across iterations: max, mid (random), min."""
    if len(widths) == 1:
        return ["max"]
    return ["max"] + [f"mid{i}" if len(widths) > 3 else "mid" for i in range(1, len(widths) - 1)] + ["min"]


class Pretrainer:
    def __init__(self, cfg: PretrainConfig, output_dir: str, resume: bool = False):
        self.cfg, self.output_dir, self.resume = cfg, output_dir, resume
        self._stop_signal = None

    # -- set-up -------------------------------------------------------------------------------------------
    def _check_output_dir(self) -> dict | None:
        last = os.path.join(self.output_dir, "last.pth")
        if not self.resume:
            if os.path.exists(last):
                raise ConfigError(f"{self.output_dir} already holds a run (last.pth); pass --resume to continue it "
                                  "or choose another --output-dir (nothing was overwritten)")
            return None
        if not os.path.exists(last):
            return None
        ckpt = load_training_checkpoint(last)
        diffs = resume_differences(ckpt["meta"].get("config", {}), self.cfg.to_dict())
        if diffs:
            raise ConfigError(f"cannot resume {last}: it was written by another config (nothing was overwritten):\n  "
                              + "\n  ".join(diffs))
        return ckpt

    def _install_signal_handlers(self):
        if threading.current_thread() is not threading.main_thread():
            return
        def handler(signum, frame):
            self._stop_signal = signum
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            signal.signal(s, handler)

    def run(self) -> dict:
        cfg = self.cfg
        device = du.local_device(cfg.train.device)
        du.init_from_env(device.type)
        main = du.is_main()
        ckpt = self._check_output_dir()  # every process validates before anything is written
        if main:
            os.makedirs(self.output_dir, exist_ok=True)
        du.barrier()
        log = get_logger(self.output_dir if main else None, main)
        if cfg.train.num_threads > 0:
            torch.set_num_threads(cfg.train.num_threads)
        seed = cfg.train.seed
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

        base = build_dataset(cfg.data.dataset, cfg.data.root, "train", None, embedded=self._embedded_args())
        data = TwoViewDataset(base, ssl_transform(cfg.data.augment, cfg.data.image_size), seed)
        probe = ResumableBatchSampler(len(data), cfg.data.batch_size, seed, du.rank(), du.world_size())
        ipe = probe.iterations_per_epoch()
        total = cfg.train.iterations or max(1, round(cfg.train.epochs * ipe))

        method = build_method(cfg).to(device)
        online = method.online
        du.broadcast_module(method)
        params = [p for p in online.parameters() if p.requires_grad]
        wd = 0.0 if cfg.group_reg.enabled else cfg.optim.weight_decay
        opt = torch.optim.SGD(params, lr=cfg.optim.lr, momentum=cfg.optim.momentum, weight_decay=wd)
        amp = cfg.train.amp and device.type == "cuda"
        scaler = torch.amp.GradScaler("cuda", enabled=amp)
        sampler_w = WidthSampler(tuple(cfg.model.width_range), cfg.sampling.num_widths, cfg.sampling.dynamic,
                                 cfg.sampling.num_stages, seed)
        greg = (GroupRegularizer(cfg.group_reg.lam, cfg.group_reg.alpha, cfg.group_reg.bins, cfg.group_reg.type)
                if cfg.group_reg.enabled else None)
        warm_iters = int(round(cfg.group_reg.warmup_epochs * ipe))
        ramp_end = int(round(cfg.group_reg.ramp_end * total))

        start = 0
        if ckpt is not None:
            start = self._restore(ckpt, method, opt, scaler, total, log)
        if start >= total:
            log.info(f"nothing to do: checkpoint is at iteration {start} of {total}")

        batches = ResumableBatchSampler(len(data), cfg.data.batch_size, seed, du.rank(), du.world_size(),
                                        start_iteration=start, num_iterations=total)
        loader = tud.DataLoader(data, batch_sampler=batches, num_workers=cfg.data.num_workers,
                                pin_memory=device.type == "cuda", persistent_workers=False)
        writer = ScalarWriter(self.output_dir, cfg.train.tensorboard and main)
        monitor = CollapseMonitor(cfg.train.collapse_warn, log)
        self._install_signal_handlers()
        log.info(f"method {cfg.method.name} | {cfg.model.arch} widths {cfg.model.width_range} | {len(data)} images, "
                 f"{ipe} it/epoch, {total} iterations from {start} | {du.world_size()} process(es) on {device} | "
                 f"step mode {cfg.sampling.step_mode}, dynamic sampling {cfg.sampling.dynamic}")

        per_width_step = cfg.sampling.step_mode == "per_width"
        method.train()
        step_times, passes, images, opt_steps = [], 0, 0, 0
        last_losses: dict[str, float] = {}
        stopped = None
        it = start
        t_run = time.perf_counter()
        bar = tqdm(total=total, initial=start, disable=not (main and cfg.train.progress), dynamic_ncols=True,
                   desc=cfg.method.name)
        for (v1, v2), _ in loader:
            t0 = time.perf_counter()
            views = (v1.to(device, non_blocking=True), v2.to(device, non_blocking=True))
            lr = lr_at(cfg, it, total)
            for g in opt.param_groups:
                g["lr"] = lr
            widths = sampler_w(it, total)
            names = slot_names(widths)
            ctx = method.begin_iteration(it, total)
            alpha_t = alpha_at(cfg.group_reg.alpha, cfg.group_reg.type, it, warm_iters, ramp_end) if greg else 0.0
            scalars = {"lr": lr, "num_widths": len(widths)}
            if not per_width_step:
                opt.zero_grad(set_to_none=True)
            for k, w in enumerate(widths):
                if per_width_step:
                    opt.zero_grad(set_to_none=True)
                set_width(online, w)
                with torch.autocast(device.type, enabled=amp):
                    loss, info = method.width_loss(views, ctx)
                total_loss = loss.float()
                if greg is not None:
                    reg = greg.penalty(method.reg_parameters(is_max=k == 0), alpha_t)
                    total_loss = total_loss + reg
                    scalars[f"reg/{names[k]}"] = float(reg.detach())
                if not torch.isfinite(total_loss):
                    raise FloatingPointError(f"non-finite loss at iteration {it}, width {w}: {float(total_loss)}")
                scaler.scale(total_loss).backward()
                if per_width_step:
                    du.all_reduce_grads(params)
                    scaler.step(opt)
                    scaler.update()
                    opt_steps += 1
                score = monitor.update(w, info["std"], info["dim"], it)
                scalars[f"loss/{names[k]}"] = float(loss.detach())
                scalars[f"collapse/{names[k]}"] = score
                scalars[f"width/{names[k]}"] = w
                passes += 1
            if not per_width_step:
                du.all_reduce_grads(params)
                scaler.step(opt)
                scaler.update()
                opt_steps += 1
            set_width(online, 1.0)
            if "momentum" in ctx:
                scalars["ema_momentum"] = ctx["momentum"]
            if greg is not None:
                scalars["group_reg/alpha_t"] = alpha_t
            step_times.append(time.perf_counter() - t0)
            images += v1.shape[0] * du.world_size()
            it += 1
            last_losses = {k: v for k, v in scalars.items() if k.startswith(("loss/", "collapse/"))}
            bar.update(1)
            if it % max(cfg.train.log_every, 1) == 0 or it == total:
                bar.set_postfix({k.replace("loss/", "L_").replace("collapse/", "C_"): f"{v:.3f}"
                                 for k, v in last_losses.items()})
                writer.add(scalars, it)
                log.info(f"it {it}/{total} lr {lr:.4g} widths {widths} " +
                         " ".join(f"{k}={v:.4f}" for k, v in last_losses.items()))
            stop_now = cfg.train.stop_after is not None and it >= cfg.train.stop_after and it < total
            if self._stop_signal is not None:
                stop_now = True
            periodic = cfg.train.checkpoint_every > 0 and it % cfg.train.checkpoint_every == 0
            if (periodic or stop_now) and it < total:
                self._save(method, opt, scaler, it, total, ipe, periodic)
            if stop_now:
                stopped = "signal" if self._stop_signal is not None else "stop_after"
                log.warning(f"stopping at iteration {it} ({stopped}); resume with --resume")
                break
        bar.close()
        wall = time.perf_counter() - t_run
        if stopped is None and it >= total:
            self._save(method, opt, scaler, it, total, ipe, False, final=True)
        writer.close()
        summary = {"method": cfg.method.name, "iterations_done": it, "total_iterations": total, "stopped": stopped,
                   "wall_s": wall, "step_time_s": sum(step_times), "steps_timed": len(step_times),
                   "forward_backward_passes": passes, "optimizer_steps": opt_steps,
                   "images_per_s": images / max(sum(step_times), 1e-9),
                   "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
                   "peak_cuda_mb": (torch.cuda.max_memory_allocated() / 2 ** 20) if device.type == "cuda" else None,
                   "last": last_losses, "step_times": step_times}
        summary["param_checksum"] = float(sum(p.detach().double().sum() for p in online.parameters()))
        name = "summary.json" if main else f"summary_rank{du.rank()}.json"
        with open(os.path.join(self.output_dir, name), "w") as f:
            json.dump(summary, f, indent=1)
        du.barrier()
        return summary

    # -- checkpoints ----------------------------------------------------------------------------------------
    def _embedded_args(self) -> dict:
        d = self.cfg.data
        return {"num_per_class_train": d.embedded_train_per_class, "num_per_class_val": d.embedded_val_per_class,
                "image_size": d.embedded_image_size, "seed": d.embedded_seed, "style": d.embedded_style}

    def _meta(self) -> dict:
        c = self.cfg
        return {"arch": c.model.arch, "cifar_stem": c.model.cifar_stem, "width_range": list(c.model.width_range),
                "calibrated_widths": [], "method": c.method.name, "config": c.to_dict()}

    def _save(self, method, opt, scaler, it, total, ipe, periodic, final=False):
        if not du.is_main():
            du.barrier()
            return
        state = {"meta": self._meta(), "model": method.online.state_dict(), "optimizer": opt.state_dict(),
                 "scaler": scaler.state_dict(), "scheduler": {"type": self.cfg.optim.schedule, "iteration": it,
                                                              "total": total},
                 "progress": {"iteration": it, "epoch": it // ipe, "batch_in_epoch": it % ipe, "total": total,
                              "world_size": du.world_size()},
                 "rng": rng_state()}
        if method.teacher is not None:
            state["teacher"] = method.teacher.state_dict()
        save_checkpoint(state, self.output_dir, it, self.cfg.train.keep_last, periodic, final)
        du.barrier()

    def _restore(self, ckpt, method, opt, scaler, total, log) -> int:
        prog = ckpt["progress"]
        if prog.get("world_size", 1) != du.world_size():
            raise CheckpointError(f"checkpoint was written by {prog['world_size']} process(es), this run has "
                                  f"{du.world_size()}: the data order would differ")
        if prog["total"] != total:
            raise CheckpointError(f"checkpoint plans {prog['total']} iterations, this config {total}")
        method.online.load_state_dict(ckpt["model"], strict=True)
        if method.teacher is not None:
            if "teacher" not in ckpt:
                raise CheckpointError("checkpoint has no teacher state")
            method.teacher.load_state_dict(ckpt["teacher"], strict=True)
        opt.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        log.info(f"resumed from iteration {prog['iteration']} (epoch {prog['epoch']}, batch {prog['batch_in_epoch']})")
        return int(prog["iteration"])


def pretrain(cfg: PretrainConfig, output_dir: str, resume: bool = False) -> dict:
    return Pretrainer(cfg, output_dir, resume).run()


__all__ = ["Pretrainer", "pretrain", "lr_at", "config_from_dict"]
