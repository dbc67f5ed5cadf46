"""Cost of a slimmable backbone per width: FLOPs (fvcore), parameters, CPU latency, interleaved ratios.

Costs are measured on the fixed-width twin (:func:`us3l.models.build_static_model`), which is what a
deployed model at that width runs; the slimmable model computes exactly the same convolutions.
FLOPs follow fvcore's convention (one fused multiply-add counts as one flop).
"""
from __future__ import annotations

import contextlib
import os
import platform
import statistics
import sys
import time

import torch
from fvcore.nn import FlopCountAnalysis

from .models import build_static_model


def count_gflops(model: torch.nn.Module, inputs: torch.Tensor) -> float:
    analysis = FlopCountAnalysis(model, inputs)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return analysis.total() / 1e9


@torch.no_grad()
def measure_latency_ms(model: torch.nn.Module, inputs: torch.Tensor, runs: int = 10, warmup: int = 2) -> float:
    """Median wall time of a forward pass in milliseconds."""
    return median_call_ms(lambda: model(inputs), runs, warmup)


def median_call_ms(fn, runs: int = 10, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` in milliseconds (after ``warmup`` untimed calls)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, runs)):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """torch's intra-op thread count set to ``threads`` inside (None: left as it is)."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _timed(fn) -> tuple[float, float]:
    w0, c0 = time.perf_counter(), time.thread_time()
    fn()
    return time.perf_counter() - w0, time.thread_time() - c0


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return q[0], statistics.median(values), q[2]


def interleaved_ratios(a, b, pairs: int, warmup: int = 1) -> dict:
    """Cost of callable ``a`` relative to ``b``, robust to load from other processes.

    The two run alternately in one loop (a b, then b a, ...) and the ratio is taken per pair, so that a
    burst of load hits both sides of a pair alike. Each call is timed by wall clock and by the CPU time of
    the calling thread (with one torch thread, the latter leaves out time the OS gave to other processes).
    Returns ``wall``/``cpu``: (lower quartile, median, upper quartile) of the ratios, and the median
    seconds of each side (``a_s``, ``b_s``).
    """
    for _ in range(warmup):
        a(), b()
    walls, cpus, a_s, b_s = [], [], [], []
    for i in range(pairs):
        if i % 2 == 0:
            ta, tb = _timed(a), _timed(b)
        else:
            tb, ta = _timed(b), _timed(a)
        walls.append(ta[0] / tb[0])
        cpus.append(ta[1] / tb[1])
        a_s.append(ta[0])
        b_s.append(tb[0])
    return {"wall": _quartiles(walls), "cpu": _quartiles(cpus), "a_s": statistics.median(a_s),
            "b_s": statistics.median(b_s), "pairs": pairs}


def profile_width(arch: str, width: float, image_size: int = 224, batch_size: int = 1, runs: int = 10,
                  cifar_stem: bool = False) -> dict:
    """FLOPs, parameters and CPU latency of the ``arch`` backbone (no classifier) at ``width``."""
    model = build_static_model(arch, width, num_classes=0, cifar_stem=cifar_stem).eval()
    x = torch.randn(batch_size, 3, image_size, image_size)
    return {
        "arch": arch,
        "width": width,
        "gflops": count_gflops(model, x[:1]),
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "latency_ms": measure_latency_ms(model, x, runs=runs) if runs > 0 else float("nan"),
        "input": f"{batch_size}x3x{image_size}x{image_size}",
    }


def bench_command() -> str:
    """The command line that produced a benchmark table, written into the table so that it can be rerun."""
    return "PYTHONPATH=$PWD OMP_NUM_THREADS=%s python %s" % (os.environ.get("OMP_NUM_THREADS", "?"), " ".join(sys.argv))


def machine_summary() -> str:
    """CPU architecture, core count and torch version, the context a timing table needs."""
    return f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"


def ratio_row(label, ratios: dict, limit: float, scale: float = 1.0, digits: int = 2) -> str:
    """A markdown row of :func:`interleaved_ratios`: wall and thread-CPU median [IQR], both sides' seconds
    times ``scale``, and whether each median meets ``<= limit``."""
    (wl, wm, wh), (cl, cm, ch) = ratios["wall"], ratios["cpu"]
    met = f"{'yes' if wm <= limit else 'no'} / {'yes' if cm <= limit else 'no'}"
    return (f"| {label} | {wm:.3f} [{wl:.3f}, {wh:.3f}] | {cm:.3f} [{cl:.3f}, {ch:.3f}] | "
            f"{ratios['a_s'] * scale:.{digits}f} | {ratios['b_s'] * scale:.{digits}f} | {met} |")


def write_report(lines: list[str], output: str | None) -> str:
    """Print a benchmark's markdown table and, if ``output`` is given, write it there."""
    text = "\n".join(lines) + "\n"
    print(text)
    if output:
        with open(output, "w") as f:
            f.write(text)
    return text
