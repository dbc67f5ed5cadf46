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
from types import SimpleNamespace

import numpy as np
import torch
import torch.utils.data as tud
from tqdm import tqdm

from ..checkpoint.report import CheckpointError
from ..data.datasets import ResumableBatchSampler, TwoViewDataset, build_dataset
from ..data.transforms import ssl_transform
from ..ssl.group_reg import GroupRegularizer, alpha_at
from ..ssl.init_from import init_from_checkpoint
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
        """Build everything, train until done / stopped, save, and write ``summary.json``.

        ``train.num_threads`` holds for the run only: the caller's torch thread count is restored afterwards
        (a run inside a longer process, e.g. a test session, must not leave it on one thread)."""
        threads = torch.get_num_threads()
        try:
            return self._run()
        finally:
            torch.set_num_threads(threads)

    def _run(self) -> dict:
        r = self._build()
        stats = {"step_times": [], "passes": 0, "images": 0, "optimizer_steps": 0, "last": {}}
        it, stopped = r.start, None
        t_run = time.perf_counter()
        bar = tqdm(total=r.total, initial=r.start, disable=not (r.main and self.cfg.train.progress),
                   dynamic_ncols=True, desc=self.cfg.method.name)
        for (v1, v2), _ in r.loader:
            t0 = time.perf_counter()
            views = (v1.to(r.device, non_blocking=True), v2.to(r.device, non_blocking=True))
            scalars, widths = self._step(r, views, it, stats)
            stats["step_times"].append(time.perf_counter() - t0)
            stats["images"] += v1.shape[0] * du.world_size()
            it += 1
            bar.update(1)
            self._log_step(r, bar, it, scalars, widths, stats)
            stopped = self._checkpoint_policy(r, it)
            if stopped:
                break
        bar.close()
        if stopped is None and it >= r.total:
            self._save(r.method, r.opt, r.scaler, it, r.total, r.ipe, False, final=True)
        r.writer.close()
        return self._summary(r, stats, it, stopped, time.perf_counter() - t_run)

    # -- build ----------------------------------------------------------------------------------------------
    def _build(self) -> SimpleNamespace:
        """Process group, output folder, seeds, data, model and loader of this run."""
        cfg = self.cfg
        r = SimpleNamespace(device=du.local_device(cfg.train.device))
        du.init_from_env(r.device.type)
        r.main = du.is_main()
        ckpt = self._check_output_dir()  # every process validates before anything is written
        if cfg.train.num_threads > 0:
            torch.set_num_threads(cfg.train.num_threads)
        seed = cfg.train.seed
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        # the data and the model (with model.init_from) before the output folder and its log: a refused dataset or
        # checkpoint leaves nothing behind
        data = self._build_data(r)
        r.method = build_method(cfg)
        r.init_report = None
        if cfg.model.init_from and ckpt is None:  # a resumed run restores everything from its own checkpoint
            mc = cfg.model
            r.init_report = init_from_checkpoint(r.method, mc.init_from, mc.arch, mc.cifar_stem)
        if r.main:
            os.makedirs(self.output_dir, exist_ok=True)
        du.barrier()
        r.log = log = get_logger(self.output_dir if r.main else None, r.main)
        if r.init_report is not None:
            self._record_init(r.init_report, log)
        self._build_model(r, ckpt)
        batches = ResumableBatchSampler(len(data), cfg.data.batch_size, seed, du.rank(), du.world_size(),
                                        start_iteration=r.start, num_iterations=r.total)
        r.loader = tud.DataLoader(data, batch_sampler=batches, num_workers=cfg.data.num_workers,
                                  pin_memory=r.device.type == "cuda", persistent_workers=False)
        r.writer = ScalarWriter(self.output_dir, cfg.train.tensorboard and r.main)
        r.monitor = CollapseMonitor(cfg.train.collapse_warn, log)
        self._install_signal_handlers()
        log.info(f"method {cfg.method.name} | {cfg.model.arch} widths {cfg.model.width_range} | {len(data)} images, "
                 f"{r.ipe} it/epoch, {r.total} iterations from {r.start} | {du.world_size()} process(es) on "
                 f"{r.device} | step mode {cfg.sampling.step_mode}, dynamic sampling {cfg.sampling.dynamic}")
        r.method.train()
        return r

    def _build_data(self, r) -> TwoViewDataset:
        """The two-view dataset; sets the run's iterations per epoch and total iterations."""
        cfg = self.cfg
        base = build_dataset(cfg.data.dataset, cfg.data.root, "train", None, embedded=self._embedded_args())
        data = TwoViewDataset(base, ssl_transform(cfg.data.augment, cfg.data.image_size), cfg.train.seed)
        probe = ResumableBatchSampler(len(data), cfg.data.batch_size, cfg.train.seed, du.rank(), du.world_size())
        r.ipe = probe.iterations_per_epoch()
        r.total = cfg.train.iterations or max(1, round(cfg.train.epochs * r.ipe))
        return data

    def _build_model(self, r, ckpt) -> None:
        """The method (built, and initialised from ``model.init_from``, by ``_build``; restored from ``ckpt``) on
        its device, optimizer, width sampler and group regularizer."""
        cfg = self.cfg
        r.method = r.method.to(r.device)
        du.broadcast_module(r.method)
        r.params = _trainable(r.method)
        wd = 0.0 if cfg.group_reg.enabled else cfg.optim.weight_decay
        r.opt = torch.optim.SGD(r.params, lr=cfg.optim.lr, momentum=cfg.optim.momentum, weight_decay=wd)
        r.amp = cfg.train.amp and r.device.type == "cuda"
        r.scaler = torch.amp.GradScaler("cuda", enabled=r.amp)
        r.widths = WidthSampler(tuple(cfg.model.width_range), cfg.sampling.num_widths, cfg.sampling.dynamic,
                                cfg.sampling.num_stages, cfg.train.seed, cfg.model.individual_width)
        r.greg = (GroupRegularizer(cfg.group_reg.lam, cfg.group_reg.alpha, cfg.group_reg.bins, cfg.group_reg.type)
                  if cfg.group_reg.enabled else None)
        r.warm_iters = int(round(cfg.group_reg.warmup_epochs * r.ipe))
        r.ramp_end = int(round(cfg.group_reg.ramp_end * r.total))
        r.start = 0
        if ckpt is not None:
            r.start = self._restore(ckpt, r.method, r.opt, r.scaler, r.total, r.log)
        if r.start >= r.total:
            r.log.info(f"nothing to do: checkpoint is at iteration {r.start} of {r.total}")

    def _record_init(self, report, log):
        """The ``model.init_from`` report: logged, and every key in init_from.json."""
        log.info(report.summary())
        if du.is_main():
            with open(os.path.join(self.output_dir, "init_from.json"), "w") as f:
                json.dump(report.to_dict(), f, indent=1)
        return report

    # -- one iteration ------------------------------------------------------------------------------------------
    def _step(self, r, views, it: int, stats: dict) -> tuple[dict, list[float]]:
        """All widths of iteration ``it``: loss (+ group regularization), backward, optimizer step(s)."""
        cfg, online, opt = self.cfg, r.method.online, r.opt
        per_width_step = cfg.sampling.step_mode == "per_width"
        lr = lr_at(cfg, it, r.total)
        for g in opt.param_groups:
            g["lr"] = lr
        widths = r.widths(it, r.total)
        names = slot_names(widths)
        ctx = r.method.begin_iteration(it, r.total)
        alpha_t = alpha_at(cfg.group_reg.alpha, cfg.group_reg.type, it, r.warm_iters, r.ramp_end) if r.greg else 0.0
        scalars = {"lr": lr, "num_widths": len(widths)}
        if not per_width_step:
            opt.zero_grad(set_to_none=True)
        for k, w in enumerate(widths):
            if per_width_step:
                # as the reference (PyTorch 1.10 zero_grad keeps zero tensors): a head a width does not use still
                # gets its SGD momentum step once it has had a gradient
                opt.zero_grad(set_to_none=False)
            set_width(online, w)
            with torch.autocast(r.device.type, enabled=r.amp):
                loss, info = r.method.width_loss(views, ctx)
            total_loss = loss.float()
            if r.greg is not None:
                reg = r.greg.penalty(r.method.reg_parameters(is_max=k == 0), alpha_t)
                total_loss = total_loss + reg
                scalars[f"reg/{names[k]}"] = float(reg.detach())
            if not torch.isfinite(total_loss):
                raise FloatingPointError(f"non-finite loss at iteration {it}, width {w}: {float(total_loss)}")
            r.scaler.scale(total_loss).backward()
            if per_width_step:
                self._optimizer_step(r, stats)
            scalars[f"loss/{names[k]}"] = float(loss.detach())
            scalars[f"collapse/{names[k]}"] = r.monitor.update(w, info["std"], info["dim"], it)
            scalars[f"width/{names[k]}"] = w
            stats["passes"] += 1
        if not per_width_step:
            self._optimizer_step(r, stats)
        set_width(online, 1.0)
        if "momentum" in ctx:
            scalars["ema_momentum"] = ctx["momentum"]
        if r.greg is not None:
            scalars["group_reg/alpha_t"] = alpha_t
        return scalars, widths

    @staticmethod
    def _optimizer_step(r, stats: dict) -> None:
        du.all_reduce_grads(r.params)
        r.scaler.step(r.opt)
        r.scaler.update()
        stats["optimizer_steps"] += 1

    def _log_step(self, r, bar, it: int, scalars: dict, widths: list[float], stats: dict) -> None:
        last = {k: v for k, v in scalars.items() if k.startswith(("loss/", "collapse/"))}
        stats["last"] = last
        if it % max(self.cfg.train.log_every, 1) == 0 or it == r.total:
            bar.set_postfix({k.replace("loss/", "L_").replace("collapse/", "C_"): f"{v:.3f}" for k, v in last.items()})
            r.writer.add(scalars, it)
            r.log.info(f"it {it}/{r.total} lr {scalars['lr']:.4g} widths {widths} " +
                       " ".join(f"{k}={v:.4f}" for k, v in last.items()))

    # -- checkpoint and stop policy -----------------------------------------------------------------------------
    def _checkpoint_policy(self, r, it: int) -> str | None:
        """Periodic checkpoints; on ``stop_after`` or a signal, save and return why the run stops."""
        tc = self.cfg.train
        stop_now = (tc.stop_after is not None and tc.stop_after <= it < r.total) or self._stop_signal is not None
        periodic = tc.checkpoint_every > 0 and it % tc.checkpoint_every == 0
        if (periodic or stop_now) and it < r.total:
            self._save(r.method, r.opt, r.scaler, it, r.total, r.ipe, periodic)
        if not stop_now:
            return None
        stopped = "signal" if self._stop_signal is not None else "stop_after"
        r.log.warning(f"stopping at iteration {it} ({stopped}); resume with --resume")
        return stopped

    # -- summary ------------------------------------------------------------------------------------------------
    def _summary(self, r, stats: dict, it: int, stopped: str | None, wall: float) -> dict:
        step_time = sum(stats["step_times"])
        summary = {"method": self.cfg.method.name, "iterations_done": it, "total_iterations": r.total,
                   "stopped": stopped, "wall_s": wall, "step_time_s": step_time,
                   "steps_timed": len(stats["step_times"]), "forward_backward_passes": stats["passes"],
                   "optimizer_steps": stats["optimizer_steps"], "images_per_s": stats["images"] / max(step_time, 1e-9),
                   "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
                   "peak_cuda_mb": (torch.cuda.max_memory_allocated() / 2 ** 20) if r.device.type == "cuda" else None,
                   "last": stats["last"], "step_times": stats["step_times"]}
        if r.init_report is not None:
            summary["init_from"] = {"source": r.init_report.source, "mapped": len(r.init_report.mapped),
                                    "dropped": len(r.init_report.dropped)}
        summary["param_checksum"] = float(sum(p.detach().double().sum() for p in r.method.online.parameters()))
        name = "summary.json" if r.main else f"summary_rank{du.rank()}.json"
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
        meta = {"arch": c.model.arch, "cifar_stem": c.model.cifar_stem, "width_range": list(c.model.width_range),
                "calibrated_widths": [], "method": c.method.name, "config": c.to_dict()}
        if c.model.individual_width is not None:  # an individually trained network: valid at this width only
            meta["individual_width"] = float(c.model.individual_width)
        return meta

    def _save(self, method, opt, scaler, it, total, ipe, periodic, final=False):
        if not du.is_main():
            du.barrier()
            return
        state = {"meta": self._meta(), "model": method.online.state_dict(), "optimizer": opt.state_dict(),
                 "scaler": scaler.state_dict(), "scheduler": {"type": self.cfg.optim.schedule, "iteration": it,
                                                              "total": total},
                 "progress": {"iteration": it, "epoch": it // ipe, "batch_in_epoch": it % ipe, "total": total,
                              "world_size": du.world_size()},
                 "rng": rng_state(),
                 # which parameters hold a (zero) gradient tensor: per-width steps move those by momentum
                 "grad_present": [i for i, p in enumerate(_trainable(method)) if p.grad is not None]}
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
        params = _trainable(method)
        for i in ckpt.get("grad_present", []):
            params[i].grad = torch.zeros_like(params[i])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        log.info(f"resumed from iteration {prog['iteration']} (epoch {prog['epoch']}, batch {prog['batch_in_epoch']})")
        return int(prog["iteration"])


def _trainable(method) -> list[torch.Tensor]:
    """The optimizer's parameters, in its order."""
    return [p for p in method.online.parameters() if p.requires_grad]


def pretrain(cfg: PretrainConfig, output_dir: str, resume: bool = False) -> dict:
    return Pretrainer(cfg, output_dir, resume).run()


__all__ = ["Pretrainer", "pretrain", "lr_at", "config_from_dict"]
