"""Timing and memory helpers shared by the benchmark scripts: CUDA events on a GPU, perf_counter on the CPU."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], object], device: torch.device, iters: int = 10, warmup: int = 2) -> float:
    """Median milliseconds of `fn()` over `iters` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def peak_memory_gib(device: torch.device, fn: Callable[[], object]) -> float:
    """Peak allocated GPU memory while running `fn()` once, above what was allocated before (NaN on the CPU)."""
    if device.type != "cuda":
        fn()
        return float("nan")
    synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**30


def matmul_tflops(device: torch.device, dtype: torch.dtype) -> float:
    """Measured dense matmul throughput (the practical GEMM ceiling): 8192^3 on a GPU, 512^3 on the CPU."""
    n = 8192 if device.type == "cuda" else 512
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    ms = time_ms(lambda: a @ b, device, iters=10 if device.type == "cuda" else 3)
    return 2 * n**3 / (ms * 1e-3) / 1e12


def copy_gbps(device: torch.device) -> float:
    """Measured memory bandwidth of a large copy (bytes read + written per second, GB/s)."""
    n = 2**28 if device.type == "cuda" else 2**22
    src = torch.empty(n, device=device, dtype=torch.float32)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device, iters=10 if device.type == "cuda" else 3)
    return 2 * n * 4 / (ms * 1e-3) / 1e9
