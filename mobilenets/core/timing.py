"""Timing that survives a noisy machine: interleaved rounds and robust statistics.

``interleaved`` warms every runner up, then times them in alternating rounds (forward, then
reversed order), so that a burst of noise from another process hits every contender alike and
ratios between them stay honest. ``Timing`` reports the median (the headline figure), mean,
p10/p90 and the relative spread ``(p90 - p10) / median``; a spread above ``NOISY`` earns a warning.
It sits in the bottom layer because deploy (export reports) and measure (bench, zoo, select) both time.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import asdict, dataclass

import numpy as np

NOISY = 0.25                   # relative spread above which a figure is flagged


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

    @classmethod
    def from_dict(cls, d: dict) -> Timing:
        return cls(**{k: d[k] for k in ("median_ms", "mean_ms", "p10_ms", "p90_ms", "min_ms", "spread", "runs")},
                   batch=int(d.get("batch", 1)))


def summarize(times_ms, batch: int = 1) -> Timing:
    a = np.asarray(times_ms, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no timings to summarize")
    med = float(np.median(a))
    p10, p90 = (float(v) for v in np.percentile(a, [10, 90]))
    return Timing(med, float(a.mean()), p10, p90, float(a.min()), (p90 - p10) / med, int(a.size), batch)


def interleaved_times(runners: dict[Hashable, Callable[[], object]], *, warmup: int = 50, iters: int = 1000,
                      rounds: int = 10, on_round: Callable[[int], None] | None = None,
                      clock: Callable[[], float] = time.perf_counter) -> dict[Hashable, list[float]]:
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
