"""Several CPU processes (gloo) for Detectron2 training, to exercise distributed code without GPUs.

Detectron2 0.6's ``launch`` starts one NCCL process per GPU and asserts CUDA. This launcher starts N CPU
processes with the gloo backend, sets up Detectron2's local process group, and lets
``create_ddp_model`` wrap a CPU model (DDP takes no ``device_ids`` for CPU modules). Everything else is
Detectron2's own code path: sharded samplers, gradient all-reduce, evaluation gathered across ranks.
"""
from __future__ import annotations

import socket

import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from ..engine.distributed import cleanup


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_create_ddp_model(model, *, fp16_compression=False, **kwargs):
    from detectron2.utils import comm

    if comm.get_world_size() == 1:
        return model
    kwargs.pop("device_ids", None)
    return DistributedDataParallel(model, **kwargs)


def _worker(rank: int, main_func, world_size: int, dist_url: str, args: tuple):
    from detectron2.engine import defaults
    from detectron2.utils import comm

    dist.init_process_group("gloo", init_method=dist_url, world_size=world_size, rank=rank)
    comm._LOCAL_PROCESS_GROUP = dist.new_group(list(range(world_size)))
    defaults.create_ddp_model = _cpu_create_ddp_model  # this CPU worker process only
    comm.synchronize()
    main_func(*args)
    cleanup()


def launch_cpu(main_func, num_processes: int, args: tuple = (), dist_url: str | None = None) -> None:
    """Run ``main_func(*args)`` in ``num_processes`` CPU processes (one machine, gloo)."""
    if num_processes < 2:
        main_func(*args)
        return
    dist_url = dist_url or f"tcp://127.0.0.1:{_free_port()}"
    mp.start_processes(_worker, nprocs=num_processes, args=(main_func, num_processes, dist_url, args),
                       start_method="spawn", daemon=False)
