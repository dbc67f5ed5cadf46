"""Process-group helpers for torchrun (multi-GPU / multi-node) and CPU (gloo) runs.

Gradients are all-reduced by hand instead of through ``DistributedDataParallel``: one iteration runs several
forward/backward passes at different widths through different heads (unused parameters change per pass), and
per-width optimizer steps need a reduction after each backward. Averaging every gradient (zeros included)
before each step is what DDP would compute.
"""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def init_from_env(device: str = "cpu") -> bool:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1); returns whether it is distributed."""
    if is_distributed():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = "nccl" if device == "cuda" else "gloo"
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    return True


def local_device(requested: str) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("train.device=cuda but CUDA is not available")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


@torch.no_grad()
def broadcast_module(module: torch.nn.Module) -> None:
    """Make every process start from rank 0's parameters and buffers."""
    if not is_distributed():
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, 0)


@torch.no_grad()
def all_reduce_grads(params) -> None:
    """Average gradients over processes (parameters without a gradient in this pass are skipped
    everywhere: all processes run the same widths and heads)."""
    if not is_distributed():
        return
    n = world_size()
    # every process runs the same widths through the same heads, so the same parameters have gradients
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= n
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup(finished: bool = True) -> None:
    """End this process's group before the interpreter exits.

    Left to the exit, gloo's worker threads can still hold tensors while Python shuts down, and a process whose
    work is done aborts ("terminate called without an active exception", SIGABRT); torchrun then reports the
    run as failed. A run that finished well (``finished``) first meets the other processes in a barrier, so no
    process shuts its group down while another is still in its last collective (rank 0 gathering the metrics
    while rank 1 is already leaving: the order seen when CI's run aborted after its evaluation had printed).
    After an error (``finished=False``) there is no barrier: the other processes may never reach it.
    """
    if not is_distributed():
        return
    if finished:
        dist.barrier()
    dist.destroy_process_group()
