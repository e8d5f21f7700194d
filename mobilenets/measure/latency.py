"""Latency of models: adaptive timing, the GEMM floor, and the machine recorded with every figure.

Interleaved timing and its statistics (``Timing``, ``summarize``, ``interleaved``) live in
``core.timing`` and are re-exported here. ``adaptive`` times one runner until its median is known
to a given precision, for searches that measure many candidates one after another.

The compute floor of a model is what this machine's own fp32 GEMM throughput allows: MACs x 2
FLOP / (the single-core GEMM FLOP/s measured by ``gemm_flops``, times the threads). It is
measured, not derived from the nominal clock, which misses turbo clocks and the width of the
core's FMA units.
"""
from __future__ import annotations

import importlib.metadata
import math
import os
import platform
import time
from collections.abc import Callable

import numpy as np
import torch

from ..core import hardware
from ..core.timing import NOISY, Timing, interleaved, interleaved_times, summarize  # noqa: F401  (re-exported)

GEMM_SIZES = (384, 512, 768)   # n of the n x n x n fp32 GEMMs that measure a core's peak


def median_halfwidth(times_ms) -> float:
    """Half the width of a ~95% confidence interval of the median, relative to the median: the
    order statistics ``n/2 -/+ sqrt(n)`` (distribution-free), so one outlier does not widen it."""
    a = np.sort(np.asarray(times_ms, dtype=np.float64))
    n = a.size
    if n < 3:
        return math.inf
    k = math.sqrt(n)
    lo, hi = a[max(0, int(n / 2 - k))], a[min(n - 1, int(math.ceil(n / 2 + k)))]
    med = float(np.median(a))
    return float((hi - lo) / 2 / med) if med > 0 else math.inf


def adaptive_times(runner: Callable[[], object], *, warmup: int = 3, min_runs: int = 10, max_runs: int = 200,
                   precision: float = 0.02, max_seconds: float = 2.0,
                   clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """Milliseconds of timed calls of ``runner``: at least ``min_runs``, then until the median is
    known to ``precision`` (``median_halfwidth``), ``max_runs`` are made or ``max_seconds`` of timed
    calls have passed. A steady runtime stops early; a noisy one gets the runs it needs."""
    for _ in range(warmup):
        runner()
    times: list[float] = []
    spent = 0.0
    check_at = min_runs
    while len(times) < max_runs:
        t = clock()
        runner()
        dt = clock() - t
        times.append(dt * 1e3)
        spent += dt
        if len(times) >= check_at:
            if median_halfwidth(times) <= precision or spent >= max_seconds:
                break
            check_at = len(times) + max(1, len(times) // 4)
    return times


def adaptive(runner: Callable[[], object], *, batch: int = 1, **kwargs) -> Timing:
    """``adaptive_times`` summarised."""
    return summarize(adaptive_times(runner, **kwargs), batch)


def gemm_flops(*, sizes: tuple[int, ...] = GEMM_SIZES, repeats: int = 10, threads: int = 1) -> float:
    """fp32 FLOP/s of square GEMMs through torch on ``threads`` threads: the best of ``repeats`` timed
    products at each of ``sizes`` after a warm-up, the best size winning. What this machine's cores
    sustain at their turbo clock; sizes that fit the caches, so that memory does not hide it."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    best = 0.0
    try:
        gen = torch.Generator().manual_seed(0)
        for n in sizes:
            a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
            out = torch.empty(n, n)
            torch.mm(a, b, out=out)
            fastest = math.inf
            for _ in range(repeats):
                t = time.perf_counter()
                torch.mm(a, b, out=out)
                fastest = min(fastest, time.perf_counter() - t)
            best = max(best, 2 * n ** 3 / fastest)
    finally:
        torch.set_num_threads(before)
    return best


def gemm_floor_ms(macs: int | None, flops: float | None, threads: int = 1) -> float | None:
    """The GEMM floor: MACs x 2 FLOP / (measured single-core GEMM FLOP/s x threads), in ms.
    No model can run faster than its arithmetic at the machine's best fp32 GEMM rate."""
    if not macs or not flops:
        return None
    return macs * 2 / (flops * threads) * 1e3


def cpu_flags() -> list[str]:
    """The SIMD flags that decide which kernels runtimes pick (AVX2, AVX-512, VNNI, BF16, AMX)."""
    return sorted(f for f in hardware.cpu_flags() if f.startswith(("avx", "amx", "fma")) or "vnni" in f)


def clock_ghz() -> float | None:
    """The nominal core clock (``cpu MHz`` of /proc/cpuinfo), None when unknown."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    return float(line.split(":", 1)[1]) / 1e3
    except (OSError, ValueError):
        pass
    return None


def library_versions() -> dict[str, str]:
    """Installed versions of every library a latency figure depends on."""
    versions = {}
    for dist in ("torch", "torchvision", "timm", "onnx", "onnxruntime", "onnxruntime-gpu", "openvino", "nncf",
                 "ai-edge-litert", "litert-torch", "executorch", "ncnn", "pnnx", "MNN", "coremltools", "numpy"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def device_name(device: str) -> str:
    """What a figure on ``device`` was measured on: "cpu", or the CUDA GPU's name."""
    if not str(device).startswith("cuda"):
        return "cpu"
    import torch
    return torch.cuda.get_device_name(torch.device(device))


def machine_info() -> dict:
    """CPU, cores, flags and the versions of every library a figure depends on."""
    return {"cpu": hardware.cpu_model(), "cores": os.cpu_count(), "clock_ghz": clock_ghz(), "flags": cpu_flags(),
            "python": platform.python_version(), "platform": platform.platform(), "versions": library_versions(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
