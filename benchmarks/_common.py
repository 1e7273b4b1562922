"""Helpers shared by the benchmark scripts: machine description and interleaved timing.

Benchmarks report ratios measured in one run. On a shared machine the load changes from
second to second, so the functions being compared are timed round-robin (A, B, C, A, B, C,
...) and each ratio is taken per round before the median: a burst of load then hits both
sides of a ratio instead of one.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count


def cpu_model() -> str:
    """The CPU's model name as ``lscpu`` prints it (``platform.processor()`` as a fallback)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def load_average() -> str:
    """The 1-minute load average from ``/proc/loadavg`` ("unknown" where there is none).

    Printed with every figure: on a shared machine it says how quiet the run was.
    """
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except (OSError, IndexError):
        return "unknown"


def machine_report() -> str:
    """One block naming the CPU, the torch build, its thread count and the current load."""
    return (
        f"CPU model: {cpu_model()}\n"
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}\n"
        f"load average (1 min, /proc/loadavg): {load_average()}"
    )


def wait_until(ready: Callable[[], bool], limit_s: float, what: str, poll_s: float = 0.5) -> None:
    """Poll ``ready()`` until it is true (a server started for a benchmark answering, say);
    ``RuntimeError`` naming ``what`` after ``limit_s`` seconds."""
    deadline = time.monotonic() + limit_s
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {limit_s:.0f} s")
        time.sleep(poll_s)


def stop(process: subprocess.Popen, grace_s: float = 20.0) -> None:
    """End a child process: terminate, then kill if it is still there after ``grace_s``."""
    process.terminate()
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def time_once(fn: Callable[[], object]) -> float:
    """Wall time of one call, in seconds (CUDA work is synchronised when present)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def interleaved_times(
    fns: dict[str, Callable[[], object]], rounds: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Time every function once per round, round-robin; ``warmup`` untimed rounds first."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(time_once(fn))
    return times


def median_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median over rounds of the per-round ratio of two interleaved timings."""
    return statistics.median(a / b for a, b in zip(numerator, denominator, strict=True))


def matmul_gflops_fn(size: int, dtype: torch.dtype = torch.float32) -> tuple[Callable, float]:
    """A square ``size`` matmul to time and its FLOP count (the machine's practical peak)."""
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    out = torch.empty(size, size, dtype=dtype)
    return (lambda: torch.mm(a, b, out=out)), 2.0 * size**3


def _cpu_flash_forward_flops(query, key, value, *args, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_flash_backward_flops(grad_out, query, key, value, *args, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


def flop_counter() -> FlopCounterMode:
    """``FlopCounterMode`` that also counts PyTorch's CPU flash-attention kernels.

    The stock registry covers the CUDA attention kernels only, so on CPU attention would
    count as free; the same formulas (two batched matmuls forward, four backward) apply.
    """
    aten = torch.ops.aten
    mapping = {
        aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_forward_flops,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_flash_backward_flops,
    }
    return FlopCounterMode(display=False, custom_mapping=mapping)


def onednn_matmul_fn(size: int) -> tuple[Callable, float]:
    """The same float32 matmul through oneDNN (PyTorch's ``mkldnn_linear``) instead of BLAS.

    On some CPUs (AMD EPYC here) PyTorch's default float32 GEMM reaches a fraction of what
    oneDNN reaches, so a ratio against the default matmul alone would flatter an encoder.
    """
    a = torch.randn(size, size).to_mkldnn()
    b = torch.randn(size, size).to_mkldnn()
    return (lambda: torch._C._nn.mkldnn_linear(a, b, None)), 2.0 * size**3
