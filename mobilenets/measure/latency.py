"""Timing that survives a noisy machine: interleaved rounds, robust statistics, the machine recorded.

Every latency figure of the package comes from ``interleaved``: all sessions are warmed up,
then timed in alternating rounds (forward, then reversed order) so that a burst of noise from
another process hits every contender alike, and ratios between them stay honest. ``Timing``
reports the median (the headline figure), mean, p10/p90 and the relative spread
``(p90 - p10) / median``; a spread above ``NOISY`` earns a warning.
"""
from __future__ import annotations

import importlib.metadata
import os
import platform
import time
from collections.abc import Callable, Hashable
from dataclasses import asdict, dataclass

import numpy as np

NOISY = 0.25                   # relative spread above which a figure is flagged
FLOP_PER_CYCLE = 32            # fp32 FMA throughput of one core: 2 x 256-bit FMA (AVX2, or AVX-512 split)


@dataclass
class Timing:
    median_ms: float
    mean_ms: float
    p10_ms: float
    p90_ms: float
    min_ms: float
    spread: float              # (p90 - p10) / median
    runs: int
    batch: int = 1

    @property
    def throughput(self) -> float:
        """Images per second at the median latency."""
        return self.batch * 1e3 / self.median_ms

    @property
    def noisy(self) -> bool:
        return self.spread > NOISY

    def to_dict(self) -> dict:
        return {**asdict(self), "throughput": self.throughput}


def summarize(times_ms, batch: int = 1) -> Timing:
    a = np.asarray(times_ms, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no timings to summarize")
    med = float(np.median(a))
    p10, p90 = (float(v) for v in np.percentile(a, [10, 90]))
    return Timing(med, float(a.mean()), p10, p90, float(a.min()), (p90 - p10) / med, int(a.size), batch)


def interleaved_times(runners: dict[Hashable, Callable[[], object]], *, warmup: int = 50, iters: int = 1000,
                      rounds: int = 10, on_round: Callable[[int], None] | None = None
                      ) -> dict[Hashable, list[float]]:
    """Milliseconds of every timed call of each zero-argument ``runner``: ``warmup`` calls each,
    then ``iters`` calls each spread over ``rounds`` alternating rounds (order reversed every
    other round)."""
    keys = list(runners)
    for k in keys:
        for _ in range(warmup):
            runners[k]()
    rounds = max(1, min(rounds, iters))
    per_round = [iters // rounds + (1 if r < iters % rounds else 0) for r in range(rounds)]
    times: dict[Hashable, list[float]] = {k: [] for k in keys}
    clock = time.perf_counter
    for r, n in enumerate(per_round):
        for k in (keys if r % 2 == 0 else reversed(keys)):
            run, out = runners[k], times[k]
            for _ in range(n):
                t = clock()
                run()
                out.append((clock() - t) * 1e3)
        if on_round:
            on_round(r)
    return times


def interleaved(runners: dict[Hashable, Callable[[], object]], *, warmup: int = 50, iters: int = 1000,
                rounds: int = 10, batch: int = 1, on_round: Callable[[int], None] | None = None
                ) -> dict[Hashable, Timing]:
    """``interleaved_times`` summarised: key -> ``Timing``."""
    times = interleaved_times(runners, warmup=warmup, iters=iters, rounds=rounds, on_round=on_round)
    return {k: summarize(v, batch) for k, v in times.items()}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The SIMD flags that decide which kernels runtimes pick (AVX2, AVX-512, VNNI, BF16, AMX)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    return sorted(f for f in flags if f.startswith(("avx", "amx", "fma")) or "vnni" in f)
    except OSError:
        pass
    return []


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


def has_bf16() -> bool:
    return any(f in ("avx512_bf16", "amx_bf16") for f in cpu_flags())


def compute_floor_ms(macs: int, threads: int = 1, ghz: float | None = None) -> float | None:
    """The fp32 compute floor: MACs x 2 FLOP / (FLOP_PER_CYCLE x clock x threads)."""
    ghz = ghz or clock_ghz()
    if not ghz:
        return None
    return macs * 2 / (FLOP_PER_CYCLE * ghz * 1e9 * threads) * 1e3


def machine_info() -> dict:
    """CPU, cores, flags and the versions of every library a figure depends on."""
    versions = {}
    for dist in ("torch", "torchvision", "timm", "onnx", "onnxruntime", "openvino", "nncf", "ai-edge-litert",
                 "numpy"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "clock_ghz": clock_ghz(), "flags": cpu_flags(),
            "python": platform.python_version(), "platform": platform.platform(), "versions": versions,
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
