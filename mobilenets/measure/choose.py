"""The zoo report and budget selection: published accuracy against latency measured here.

``zoo_report`` measures the family's headline variants on the fastest installed runtime (every
installed one is a contender, LiteRT included) and returns one ``Entry`` per variant (params,
MACs, published ImageNet top-1, latency). ``select`` finds the variants x precisions that fit a
latency / parameter / file-size budget, ranked by published accuracy; each precision is measured
on the installed runtime that runs it fastest (the fastest fp32 runtime is often not the fastest
int8 one), or on the one runtime asked for. Since a search is mostly exports, a runtime whose
timing exports are cheaper (``EXPORT_COST``) and whose time on the probe is within
``EXPORT_TOLERANCE`` of the fastest is searched instead, and a note says so. ``frontier`` marks the
entries no other entry beats on both latency and accuracy; ``plot`` draws them. Accuracy is
always the *published* ImageNet figure (fp32); int8 entries carry it with a note, since their
loss depends on the checkpoint and calibration (measure it with ``mobilenets eval`` on the
exported file).

``select``'s answer is the ``top`` most accurate fitting entries, ranked by published top-1, then
by latency, where a variant enters with its fp32 entry when that fits, else with each of its
reduced-precision (int8, bf16) entries that fits. A reduced precision carries the fp32 published
top-1 but loses some accuracy, so it never belongs in the answer beside a fitting fp32 entry of the
same variant. The search measures only what can still change that answer, most accurate first:

* a variant whose GEMM floor (``latency.gemm_floor_ms``, with ``FLOOR_SLACK`` for runtimes whose
  kernels beat torch's GEMM) exceeds the budget cannot fit and is not exported;
* within a family, time grows at least in proportion to MACs (a smaller variant has relatively
  more depthwise and fixed overhead), so a measured variant bounds every smaller one from below:
  one predicted over ``FAMILY_SLACK`` x the budget is not exported either;
* a reduced precision is measured only where it can change the answer: never when the variant's
  fp32 entry fits; int8 only when the fp32 variant is within reach of the budget: ``INT8_REACH``
  (int8 does at most 4 multiply-adds where fp32 does one), or ``INT8_SLACK`` x the best int8
  speed-up measured in the family on this runtime;
* with ``top``, once that many entries fit, a candidate with a lower published top-1 than the
  ``top``-th of them cannot enter the answer and is not measured ("below the top N"); candidates
  come most accurate first, so the search ends there. Time does not fall monotonically with MACs
  across widths, so a variant is never taken to fit because a larger one does: whatever enters
  the answer is measured.

What was not measured is listed with the reason. Timing is adaptive (``latency.adaptive``: a
steady runtime is timed briefly), every figure goes to the measurement cache, so a second search
on the same machine measures nothing it measured before.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..core.errors import UsageError
from ..core.files import atomic_path, atomic_write
from ..core.hardware import cpu_has_bf16
from ..deploy.runtimes import RUNTIMES
from ..models import FAMILIES, VARIANTS, Variant, get_variant
from . import latency
from .bench import (
    SUPPORTED,
    Bench,
    BenchRow,
    Cell,
    Progress,
    Target,
    check_settings,
    installed_backends,
    measure_interleaved,
    plan,
    resolve_target,
)
from .cache import MeasurementCache

HEADLINE = [
    "mobilenet_v1_100", "mobilenet_v1_075", "mobilenet_v1_050", "mobilenet_v1_025",
    "mobilenet_v2_140", "mobilenet_v2_100", "mobilenet_v2_075", "mobilenet_v2_050", "mobilenet_v2_035",
    "mobilenet_v3_large_100", "mobilenet_v3_large_075", "mobilenet_v3_small_100", "mobilenet_v3_small_075",
    "mobilenet_v3_large_minimal_100", "mobilenet_v3_small_minimal_100",
    "mobilenext_140", "mobilenext_100", "mobilenext_075", "mobilenext_050",
    "mobilenet_v4_conv_small", "mobilenet_v4_conv_medium", "mobilenet_v4_conv_large",
    "mobilenet_v4_hybrid_medium", "mobilenet_v4_hybrid_large",
]
RESOLUTIONS = ["mobilenet_v1_100_192", "mobilenet_v1_100_160", "mobilenet_v1_100_128",
               "mobilenet_v2_100_192", "mobilenet_v2_100_160", "mobilenet_v2_100_128", "mobilenet_v2_100_96"]
PROBE = "mobilenet_v2_100"     # the model that decides which runtime is fastest
QUICK_TIMING = dict(warmup=5, iters=30, rounds=3)
FULL_TIMING = dict(warmup=50, iters=300, rounds=10)
# select's search (see the module doc)
FLOOR_SLACK = 0.8              # prune when 0.8 x GEMM floor > budget: runtimes may beat torch's GEMM a little
FAMILY_SLACK = 1.25            # prune when a family's linear lower bound > 1.25 x budget (noise, cache effects)
INT8_REACH = 4.0               # int8 is at most 4x faster than fp32
INT8_SLACK = 1.25              # once a family's int8 speed-up is measured: at most 1.25 x that
# Runtimes left out of the default search of a precision because their conversion is slow, unless the
# probe's figure or export is cached already (then it competes at no cost) or ``--backend`` names them.
SLOW_EXPORT = 10.0  # runtimes whose exports cost this much (Runtime.export_cost) are searched only when asked
SLOW = {p: {b: "its conversion takes tens of seconds a model" for b, r in RUNTIMES.items()
            if r.export_cost.get(p, 1.0) >= SLOW_EXPORT} for p in ("fp32", "int8")}
# What a timing export costs on each runtime, relative to an ONNX export (torch times the module: no export).
# A precision is searched on a runtime with cheaper exports when its time on the probe is within
# EXPORT_TOLERANCE of the fastest runtime's; a note says so (``--backend`` searches on the fastest).
EXPORT_COST = {p: {b: r.export_cost.get(p, 1.0) for b, r in RUNTIMES.items() if p in r.precisions}
               for p in ("fp32", "int8")}
EXPORT_TOLERANCE = 0.05
ADAPTIVE = dict(warmup=3, min_runs=10, max_runs=100, precision=0.03, max_seconds=1.0)


@dataclass
class Entry:
    name: str
    family: str
    width: float
    resolution: int
    precision: str
    backend: str
    params: int
    macs: int
    top1: float | None          # published ImageNet top-1 (fp32)
    median_ms: float | None     # None: not measured (see Selection.unmeasured)
    p90_ms: float | None
    spread: float | None
    size_mb: float | None       # exported file size (weights at this precision)
    frontier: bool = False
    measured_at: str = ""       # ISO date of the figure
    cached: bool = False        # read back from the measurement cache

    def to_dict(self) -> dict:
        return asdict(self)


def frontier(entries: Sequence[Entry], cost: str = "median_ms") -> list[Entry]:
    """Measured entries with a published top-1 that no cheaper entry beats in accuracy, sorted by
    ``cost`` ("median_ms" or "macs"); with latency as the cost, marks ``Entry.frontier``."""
    best, out = -1.0, []
    pts = [e for e in entries if e.top1 is not None and e.median_ms is not None]
    for e in sorted(pts, key=lambda e: (getattr(e, cost), -e.top1)):
        if e.top1 > best:
            best = e.top1
            out.append(e)
    if cost == "median_ms":
        for e in entries:
            e.frontier = any(e is f for f in out)
    return out


def fastest_backend(b: Bench, backends: Sequence[str] | None = None, probe: str = PROBE,
                    precision: str = "fp32", leave_out: Sequence[str] = ()) -> str:
    """The installed backend that runs ``probe`` fastest at ``precision``, by a short interleaved
    bench (or the figures of one in the measurement cache). Every installed runtime that offers
    the precision competes, except those in ``leave_out``."""
    use = contenders(backends, precision, leave_out)
    if len(use) == 1:
        return use[0]
    return min(probe_rows(b, use, probe, precision), key=lambda r: r.timing.median_ms).backend


def contenders(backends: Sequence[str] | None, precision: str, leave_out: Sequence[str] = ()) -> list[str]:
    """The installed backends (of ``backends``, or all) that offer ``precision``, but compile and
    ``leave_out``; ``UsageError`` when none is left."""
    use, _ = installed_backends(backends)
    use = [x for x in use if x != "compile" and precision in SUPPORTED[x] and x not in leave_out]
    if not use:
        raise UsageError(f"no installed runtime runs {precision}: pip install 'mobilenets[runtimes]'")
    return use


def probe_rows(b: Bench, backends: Sequence[str], probe: str = PROBE, precision: str = "fp32") -> list[BenchRow]:
    """``probe``'s row on each of ``backends`` at ``precision``: a short interleaved bench, or the
    figures of one in the measurement cache. ``UsageError`` when no backend could run it."""
    skipped: list[str] = []
    cells = plan([resolve_target(probe)], backends, [precision], peers=False, explicit_backends=True, bench=b,
                 skipped=skipped)
    rows = measure_interleaved(b, cells, skipped=skipped, **QUICK_TIMING)
    if not rows:
        raise UsageError(f"no runtime could run {probe} {precision}: " + "; ".join(skipped))
    return rows


def cheapest_near_fastest(rows: Sequence[BenchRow], precision: str) -> tuple[str, str | None]:
    """The runtime to search ``precision`` on, from the probe's ``rows``: the fastest, unless a runtime
    whose timing exports cost less (``EXPORT_COST``) runs the probe within ``EXPORT_TOLERANCE`` of it;
    then the cheapest such runtime, and a note naming the faster one passed over and how to search on it."""
    fastest = min(rows, key=lambda r: r.timing.median_ms)
    cost = EXPORT_COST.get(precision, {})
    if fastest.backend not in cost:
        return fastest.backend, None
    near = [r for r in rows if cost.get(r.backend, cost[fastest.backend]) < cost[fastest.backend]
            and r.timing.median_ms <= (1 + EXPORT_TOLERANCE) * fastest.timing.median_ms]
    if not near:
        return fastest.backend, None
    pick = min(near, key=lambda r: (cost[r.backend], r.timing.median_ms))
    gain = 1 - fastest.timing.median_ms / pick.timing.median_ms
    dearer = (f"its exports cost ~{cost[fastest.backend] / cost[pick.backend]:.3g}x {pick.backend}'s"
              if cost[pick.backend] else f"{pick.backend} needs no export")
    return pick.backend, (f"{precision} searched on {pick.backend}: {fastest.backend} was {gain:.1%} faster on the "
                          f"probe but {dearer}; --backend {fastest.backend} to search on it")


def _entry(row: BenchRow, variant: Variant) -> Entry:
    size = row.size_bytes / 1e6 if row.size_bytes else (row.params or 0) * (1 if row.precision == "int8" else 4) / 1e6
    t = row.timing
    return Entry(variant.name, variant.family, row.width, row.resolution, row.precision, row.backend, row.params,
                 row.macs, variant.top1, t.median_ms, t.p90_ms, t.spread, round(size, 2),
                 measured_at=row.measured_at, cached=row.cached)


@dataclass
class ZooReport:
    entries: list[Entry]
    backend: str
    machine: dict
    settings: dict

    def to_dict(self) -> dict:
        return {"backend": self.backend, "machine": self.machine, "settings": self.settings,
                "entries": [e.to_dict() for e in self.entries]}


def zoo_report(*, quick: bool = False, backends: Sequence[str] | None = None, threads: int = 1,
               models: Sequence[str] | None = None, fresh: bool = False, cache: MeasurementCache | None = None,
               progress: Progress | None = None) -> ZooReport:
    """Every family at its headline widths (and, unless ``quick``, V1/V2 resolutions), fp32, on the
    fastest installed backend. ``quick``: headline widths and short timing."""
    names = list(models or (HEADLINE if quick else HEADLINE + RESOLUTIONS))
    check_settings(threads=threads)
    targets = [resolve_target(n) for n in names]
    b = Bench(threads=threads, cache=cache, fresh=fresh, progress=progress)
    backend = fastest_backend(b, backends)
    timing = QUICK_TIMING if quick else FULL_TIMING
    skipped: list[str] = []
    cells = plan(targets, [backend], ["fp32"], peers=False, explicit_backends=True, bench=b, skipped=skipped)
    rows = measure_interleaved(b, cells, skipped=skipped, **timing)
    entries = [_entry(r, VARIANTS[r.model]) for r in rows]
    frontier(entries)
    settings = dict(models=names, backend=backend, threads=threads, batch=1, quick=quick, fresh=fresh,
                    gemm_gflops=b.gemm_flops() / 1e9, skipped=skipped, **timing)
    return ZooReport(entries, backend, latency.machine_info(), settings)


@dataclass
class Selection:
    fits: list[Entry]
    rejected: list[tuple[Entry, str]]        # measured, and over a cap
    budget: dict
    backends: dict[str, str]                 # precision -> the runtime its entries were measured on
    machine: dict
    unmeasured: list[tuple[Entry, str]] = field(default_factory=list)   # not measured, with the reason
    notes: list[str] = field(default_factory=list)   # runtimes left out of the search, with the reason

    @property
    def backend(self) -> str:
        """The runtime(s), for a title: "openvino", or "litert (fp32), openvino (int8)"."""
        if len(set(self.backends.values())) == 1:
            return next(iter(self.backends.values()))
        return ", ".join(f"{b} ({p})" for p, b in self.backends.items())

    def to_dict(self) -> dict:
        return {"budget": self.budget, "backends": self.backends, "machine": self.machine,
                "fits": [e.to_dict() for e in self.fits],
                "rejected": [dict(e.to_dict(), reason=why) for e, why in self.rejected],
                "unmeasured": [dict(e.to_dict(), reason=why) for e, why in self.unmeasured],
                "notes": self.notes}


def parse_count(text: str | float | int | None) -> float | None:
    """'3M' -> 3e6, '500k' -> 5e5, '2.5e6' -> 2.5e6."""
    if text is None or isinstance(text, int | float):
        return text
    t = str(text).strip().lower()
    scale = {"k": 1e3, "m": 1e6, "g": 1e9}.get(t[-1:], 1.0)
    try:
        return float(t[:-1] if scale != 1.0 else t) * scale
    except ValueError:
        raise UsageError(f"not a count: {text!r} (examples: 3M, 500k, 2.5e6)") from None


@dataclass
class _Candidate:
    target: Target
    variant: Variant
    precision: str
    macs: int
    params: int

    def entry(self, backend: str) -> Entry:
        return Entry(self.variant.name, self.variant.family, self.variant.width, self.target.resolution,
                     self.precision, backend, self.params, self.macs, self.variant.top1, None, None, None, None)


def _published(b: Bench, variant: Variant, target: Target) -> tuple[int, int]:
    """(MACs, params) from the published table, profiled where the table has no figure."""
    if variant.macs_m and variant.params_m:
        return int(variant.macs_m * 1e6), int(variant.params_m * 1e6)
    macs, params = b.complexity(target)
    return int(macs), int(params)


ANSWER_S = 2.0  # of --max-seconds, kept for saving the cache and writing the answer

def select(budget_ms: float, *, backend: str | None = None, max_params: str | float | None = None,
           max_size_mb: float | None = None, precisions: Sequence[str] = ("fp32", "int8"), threads: int = 1,
           models: Sequence[str] | None = None, top: int | None = None, fresh: bool = False,
           cache: MeasurementCache | None = None, progress: Progress | None = None,
           max_seconds: float | None = None, spent_s: float = 0.0, clock=time.monotonic) -> Selection:
    """The variants x precisions that fit the budget, best published top-1 first, then fastest (see the
    module doc). ``fits[:top]`` is the answer an exhaustive search would give wherever the prunes'
    bounds hold: a reduced precision (int8, bf16) of a variant enters it only when the variant's fp32
    entry does not fit (it would repeat that published top-1 at a lower real accuracy), so it is not
    measured then. ``fits`` may run past ``top`` where candidates tie with the ``top``-th fit on
    published top-1 (each was measured to rank the tie). ``unmeasured`` gives the reason each entry
    left out was not measured: "below the top N" for those that cannot enter the answer.

    ``max_seconds``: after this long (runtime choice included), or when the last export's duration
    says the next one would end past it, only candidates whose figure is cached are still measured;
    the rest are left unmeasured with the reason "time limit", and a note says how far the answer is
    final (every entry ranked above the first candidate left out). ``spent_s``: seconds of the
    limit already gone (the command line's start-up); ``ANSWER_S`` is kept for writing the answer.
    What was measured is cached, so the same call continues where this one stopped."""
    if budget_ms <= 0:
        raise UsageError(f"--budget-ms must be > 0, got {budget_ms}")
    params_cap = parse_count(max_params)
    if params_cap is not None and params_cap <= 0:
        raise UsageError(f"--max-params must be > 0, got {max_params}")
    if max_size_mb is not None and max_size_mb <= 0:
        raise UsageError(f"--max-size-mb must be > 0, got {max_size_mb}")
    if top is not None and top < 1:
        raise UsageError(f"--top must be >= 1, got {top}")
    if max_seconds is not None and max_seconds < 0:
        raise UsageError(f"--max-seconds must be >= 0, got {max_seconds}")
    deadline = clock() + max_seconds - spent_s - ANSWER_S if max_seconds else None
    check_settings(threads=threads, precisions=precisions)
    if backend is not None:
        use, missing = installed_backends([backend])  # unknown -> UsageError
        if not use:
            raise UsageError(missing[0])
        precisions = [p for p in precisions if p in SUPPORTED[backend]]
        if not precisions:
            raise UsageError(f"backend {backend} offers none of the requested precisions")
    if "bf16" in precisions and not cpu_has_bf16():
        precisions = [p for p in precisions if p != "bf16"]
        if not precisions:
            raise UsageError("bf16: this CPU has no native bf16 (avx512_bf16/amx_bf16)")
    names = list(models or [n for n, v in VARIANTS.items() if v.top1 is not None])
    variants = [get_variant(n) for n in names]  # an unknown name fails here, before anything is measured
    targets = {v.name: resolve_target(v.name) for v in variants}
    b = Bench(threads=threads, cache=cache, fresh=fresh, progress=progress)
    backends, notes = _runtimes(b, backend, precisions)
    search = _Search(b, backends, budget_ms, params_cap, max_size_mb, top, deadline, clock)
    order = sorted(((v, targets[v.name]) for v in variants), key=lambda vt: (-(vt[0].top1 or 0), vt[0].macs_m or 0))
    # fp32 before a variant's reduced precisions: whether it fits decides whether they are measured
    ranked = sorted(precisions, key=lambda p: p != "fp32")
    candidates = []
    for variant, target in order:
        macs, params = _published(b, variant, target)
        candidates += [_Candidate(target, variant, p, macs, params) for p in ranked]
    search.run(candidates)
    b.save()
    if search.stopped_at is not None:
        c = search.stopped_at
        notes.append(f"stopped at the time limit ({max_seconds:g} s, --max-seconds): the answer is final for "
                     f"every entry above published top-1 {c.variant.top1} ({len(search.fits)} fit so far); run the "
                     f"same command again to continue from the cached measurements")
    entries = search.fits + [e for e, _ in search.rejected]
    frontier(entries)
    search.fits.sort(key=_rank)
    budget = dict(budget_ms=budget_ms, max_params=params_cap, max_size_mb=max_size_mb, precisions=list(precisions),
                  threads=threads, top=top, gemm_gflops=b.gemm_flops() / 1e9)
    return Selection(search.fits, search.rejected, budget, backends, latency.machine_info(), search.unmeasured,
                     notes)


def _rank(e: Entry) -> tuple:
    """The answer's order: published top-1, then latency (name and precision break exact ties)."""
    return -(e.top1 or 0), e.median_ms, e.name, e.precision


def _runtimes(b: Bench, backend: str | None, precisions: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """precision -> the runtime its entries are measured on: ``backend``; else the fastest on the
    probe, or one with cheaper exports within ``EXPORT_TOLERANCE`` of it (``cheapest_near_fastest``).
    A note for each runtime left out of the search (``SLOW``) or passed over for its export cost,
    with the reason: no runtime is passed over silently."""
    if backend is not None:
        return {p: backend for p in precisions}, []
    chosen, notes = {}, []
    installed, _ = installed_backends(None)
    for p in precisions:
        leave = []
        for slow, why in SLOW.get(p, {}).items():
            probe = b.cell(resolve_target(PROBE), slow, p)
            known = b.cached(probe) is not None or b.has_export(probe)   # then the probe costs no conversion
            if slow in installed and not known:
                leave.append(slow)
                notes.append(f"{p} on {slow} not searched ({why}); --backend {slow} to include it")
        use = contenders(None, p, leave)
        if len(use) == 1:
            chosen[p] = use[0]
            continue
        chosen[p], note = cheapest_near_fastest(probe_rows(b, use, PROBE, p), p)
        if note:
            notes.append(note)
    return chosen, notes


class _Search:
    """The pruned search of ``select`` (see the module doc)."""

    def __init__(self, b: Bench, backends: dict[str, str], budget_ms: float, params_cap: float | None,
                 max_size_mb: float | None, top: int | None, deadline: float | None = None,
                 clock=time.monotonic):
        self.b, self.backends, self.budget = b, backends, budget_ms
        self.deadline, self.clock = deadline, clock
        self.stopped_at: _Candidate | None = None   # the first candidate the time limit left out
        self.last_cost = 0.0                         # seconds the last export + timing took
        self.params_cap, self.max_size_mb, self.top = params_cap, max_size_mb, top
        self.fits: list[Entry] = []
        self.rejected: list[tuple[Entry, str]] = []
        self.unmeasured: list[tuple[Entry, str]] = []
        self.measured: dict[tuple[str, str], Entry] = {}     # (variant, precision) -> entry
        self.done = 0

    def run(self, candidates: list[_Candidate]) -> None:
        for i, c in enumerate(candidates):
            why = self.prune(c)
            if why:
                self.unmeasured.append((c.entry(self.backends[c.precision]), why))
                continue
            if self.out_of_time() and not self.is_cached(c):
                self.stopped_at = self.stopped_at or c
                self.unmeasured.append((c.entry(self.backends[c.precision]), "time limit (--max-seconds): not "
                                        "measured yet"))
                continue
            left = len(candidates) - i
            if self.top is not None:
                left = min(left, max(1, 2 * (self.top - len(self.fits))))
            self.measure(c, self.done, self.done + left)
            self.done += 1

    def prune(self, c: _Candidate) -> str | None:
        """Why ``c`` need not be measured, or None."""
        if self.top is not None and len(self.fits) >= self.top:
            nth = sorted(self.fits, key=_rank)[self.top - 1]
            if (c.variant.top1 or 0) < (nth.top1 or 0):
                return (f"below the top {self.top}: {self.top} entries with a higher published top-1 fit "
                        f"already")
        if self.params_cap is not None and c.params > self.params_cap:
            return f"{c.params / 1e6:.2f}M params > {self.params_cap / 1e6:g}M"
        weight_bytes = 1 if c.precision == "int8" else 4
        if self.max_size_mb is not None and c.params * weight_bytes / 1e6 > self.max_size_mb:
            return f"{c.params / 1e6:.2f}M weights of {weight_bytes} B > {self.max_size_mb:g} MB"
        speedup = self.int8_reach(c.variant.family) if c.precision == "int8" else 1.0
        floor = self.b.floor_ms(c.macs)
        if floor is not None and floor * FLOOR_SLACK / speedup > self.budget:
            return (f"GEMM floor {floor:.2f} ms" + (f" / {speedup:.3g} (int8 reach)" if speedup > 1 else "")
                    + f" > {self.budget:g} ms")
        twin = self.measured.get((c.variant.name, "fp32")) if c.precision != "fp32" else None
        if twin is not None and self._fits(twin):
            return f"its fp32 version fits: {c.precision} cannot change the answer"
        if c.precision == "int8" and twin is not None and twin.median_ms > speedup * self.budget:
            return (f"fp32 {twin.median_ms:.2f} ms > {speedup:.3g} (int8 reach) x {self.budget:g} ms: "
                    f"int8 cannot reach")
        bound = self._family_bound(c)
        if bound is not None and bound[0] > FAMILY_SLACK * self.budget:
            return f"{bound[1].name} {c.precision} runs {bound[1].median_ms:.2f} ms: at least {bound[0]:.2f} ms here"
        return None

    def int8_reach(self, family: str) -> float:
        """How much faster int8 may run than fp32 in ``family`` (each on its runtime): ``INT8_SLACK`` x the
        best speed-up measured in the family so far, ``INT8_REACH`` before one is measured (or when
        that is lower). Families differ (V3's hard-swish and squeeze-excite quantize poorly), so
        one family's speed-up does not bound another's."""
        seen = [fp.median_ms / q.median_ms for (name, prec), q in self.measured.items()
                if prec == "int8" and q.family == family and (fp := self.measured.get((name, "fp32"))) is not None]
        return min(INT8_REACH, INT8_SLACK * max(seen)) if seen else INT8_REACH

    def _family_bound(self, c: _Candidate) -> tuple[float, Entry] | None:
        """The highest linear lower bound on ``c``'s time from larger measured variants of its family."""
        best = None
        for e in self.measured.values():
            if e.family == c.variant.family and e.precision == c.precision and e.macs >= c.macs:
                bound = e.median_ms * c.macs / e.macs
                if best is None or bound > best[0]:
                    best = (bound, e)
        return best

    def _why_not(self, e: Entry) -> str:
        why = []
        if e.median_ms > self.budget:
            why.append(f"{e.median_ms:.2f} ms > {self.budget:g} ms")
        if self.params_cap is not None and e.params > self.params_cap:
            why.append(f"{e.params / 1e6:.2f}M params > {self.params_cap / 1e6:g}M")
        if self.max_size_mb is not None and e.size_mb > self.max_size_mb:
            why.append(f"{e.size_mb:.1f} MB > {self.max_size_mb:g} MB")
        return "; ".join(why)

    def _fits(self, e: Entry) -> bool:
        return not self._why_not(e)

    def out_of_time(self) -> bool:
        """Past the deadline, or the last export's duration says the next one would end past it."""
        return self.deadline is not None and self.clock() + 1.25 * self.last_cost > self.deadline

    def is_cached(self, c: _Candidate) -> bool:
        cell = self.b.cell(c.target, self.backends[c.precision], c.precision)
        return self.b.cached(cell, min_runs=ADAPTIVE["min_runs"]) is not None

    def measure(self, c: _Candidate, done: int, total: int) -> None:
        b = self.b
        cell = b.cell(c.target, self.backends[c.precision], c.precision)
        row = b.cached(cell, min_runs=ADAPTIVE["min_runs"])
        if row is None:
            t0 = self.clock()
            row = self._time(cell, done, total)
            self.last_cost = self.clock() - t0
        if row is None:
            return
        e = _entry(row, c.variant)
        self.measured[(c.variant.name, c.precision)] = e
        why = self._why_not(e)
        (self.rejected.append((e, why)) if why else self.fits.append(e))

    def _time(self, cell: Cell, done: int, total: int) -> BenchRow | None:
        b = self.b
        b.progress(f"exporting {cell.label}", done, total)
        try:
            session = b.session(cell)
        except UsageError as exc:
            self.unmeasured.append((Entry(cell.target.label, cell.target.family, cell.target.width,
                                          cell.target.resolution, cell.precision, cell.backend, 0, 0,
                                          None, None, None, None, None), f"cannot run: {exc}"))
            return None
        b.progress(f"timing {cell.label}", done + 0.8, total)
        timing = latency.adaptive(session.runner(b.input(cell)), batch=b.batch, **ADAPTIVE)
        row = b.record(cell, timing, getattr(session, "path", None))
        b.save()
        return row


def plot(entries: Sequence[Entry], path: str | os.PathLike, *, title: str, budget_ms: float | None = None) -> Path:
    """Top-1 against latency and against MACs, one colour per family, the frontier drawn (PNG)."""
    # Imported here, not at the top: pyplot takes about half a second to import, and every start of
    # the CLI imports this module; only the charts (zoo, select --plot) need it.
    import matplotlib
    matplotlib.use("Agg")  # files only: never a window
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    pts = [e for e in entries if e.top1 is not None and e.median_ms is not None]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    series = {e.family: FAMILIES[e.family].series or e.family for e in pts}  # V4's five models: one series
    families = sorted(set(series.values()))
    colours = {fam: plt.cm.tab10.colors[i % 10] for i, fam in enumerate(families)}
    for ax, xkey, xlabel in ((axes[0], "median_ms", "latency, median ms"), (axes[1], "macs", "MACs (M)")):
        for fam in families:
            group = [e for e in pts if series[e.family] == fam]
            xs = [getattr(e, xkey) / (1e6 if xkey == "macs" else 1) for e in group]
            ax.scatter(xs, [e.top1 for e in group], color=colours[fam], label=fam,
                       marker="o", s=[28 if e.precision == "fp32" else 40 for e in group],
                       edgecolors=["black" if e.precision == "int8" else "none" for e in group])
            for e, x in zip(group, xs, strict=True):
                label = e.name.replace("mobilenet_", "").replace("mobilenext_", "next_")
                ax.annotate(label + (" int8" if e.precision == "int8" else ""), (x, e.top1),
                            fontsize=6, alpha=0.7, xytext=(3, 2), textcoords="offset points")
        front = frontier(list(entries), xkey)
        if front:
            scale = 1e6 if xkey == "macs" else 1
            ax.step([getattr(e, xkey) / scale for e in front], [e.top1 for e in front], where="post", color="black",
                    lw=1, alpha=0.6, label="frontier")
        if xkey == "median_ms" and budget_ms:
            ax.axvline(budget_ms, color="red", ls="--", lw=1, label=f"budget {budget_ms:g} ms")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_locator(matplotlib.ticker.LogLocator(subs=(2, 5)))  # 2, 5, 20, 50...: no overlap
        ax.xaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.tick_params(axis="x", which="minor", labelsize=7)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("published ImageNet top-1 (%)")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return Path(path)


def write_json(obj: dict, path: str | os.PathLike) -> Path:
    return atomic_write(Path(path), json.dumps(obj, indent=1).encode())
