"""The zoo report and budget selection: published accuracy against latency measured here.

``zoo_report`` measures the family's headline variants on the fastest installed backend and
returns one ``Entry`` per variant (params, MACs, published ImageNet top-1, latency);
``select`` measures every variant with a published top-1 (x precision) on one backend and keeps
those that fit a latency / parameter / file-size budget, ranked by published accuracy.
``frontier`` marks the entries no other entry beats on both latency and accuracy; ``plot``
draws them. Accuracy is always the *published* ImageNet figure (fp32); int8 entries carry it
with a note, since their loss depends on the checkpoint and calibration (measure it with
``mobilenets eval`` on the exported file).
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ..core.errors import UsageError
from ..core.files import atomic_path, atomic_write
from ..models import VARIANTS
from . import bench as benchmod
from . import latency

HEADLINE = [
    "mobilenet_v1_100", "mobilenet_v1_075", "mobilenet_v1_050", "mobilenet_v1_025",
    "mobilenet_v2_140", "mobilenet_v2_100", "mobilenet_v2_075", "mobilenet_v2_050", "mobilenet_v2_035",
    "mobilenet_v3_large_100", "mobilenet_v3_large_075", "mobilenet_v3_small_100", "mobilenet_v3_small_075",
    "mobilenet_v3_large_minimal_100", "mobilenet_v3_small_minimal_100",
    "mobilenext_140", "mobilenext_100", "mobilenext_075", "mobilenext_050",
]
RESOLUTIONS = ["mobilenet_v1_100_192", "mobilenet_v1_100_160", "mobilenet_v1_100_128",
               "mobilenet_v2_100_192", "mobilenet_v2_100_160", "mobilenet_v2_100_128", "mobilenet_v2_100_96"]
QUICK_BACKENDS = ("onnxruntime", "openvino")


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
    median_ms: float
    p90_ms: float
    spread: float
    size_mb: float              # exported file size (weights at this precision)
    frontier: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def frontier(entries: Sequence[Entry], cost: str = "median_ms") -> list[Entry]:
    """Entries with a published top-1 that no cheaper entry beats in accuracy, sorted by ``cost``
    ("median_ms" or "macs"); with latency as the cost, marks ``Entry.frontier``."""
    best, out = -1.0, []
    for e in sorted((e for e in entries if e.top1 is not None), key=lambda e: (getattr(e, cost), -e.top1)):
        if e.top1 > best:
            best = e.top1
            out.append(e)
    if cost == "median_ms":
        for e in entries:
            e.frontier = any(e is f for f in out)
    return out


def fastest_backend(backends: Sequence[str] | None = None, probe: str = "mobilenet_v2_100",
                    status: Callable[[str], None] | None = None) -> str:
    """The installed backend that runs ``probe`` fastest (fp32, 1 thread), by a short interleaved bench."""
    use, _ = benchmod.installed_backends(backends)
    use = [b for b in use if b != "compile"] or use
    if len(use) == 1:
        return use[0]
    report = benchmod.bench([probe], backends=use, warmup=5, iters=30, rounds=3, status=status)
    return min(report.rows, key=lambda r: r.timing.median_ms).backend


def _entries(report: benchmod.BenchReport) -> list[Entry]:
    out = []
    for r in report.rows:
        if r.impl != "mobilenets":
            continue
        v = VARIANTS[r.model]
        size = _file_size_mb(r) or r.params * (1 if r.precision == "int8" else 4) / 1e6
        out.append(Entry(r.model, v.family, r.width, r.resolution, r.precision, r.backend, r.params, r.macs, v.top1,
                         r.timing.median_ms, r.timing.p90_ms, r.timing.spread, round(size, 2)))
    return out


def _file_size_mb(row: benchmod.BenchRow) -> float | None:
    """The size of the export behind ``row`` (OpenVINO's weights file included), if there is one."""
    if row.file is None:
        return None
    f = Path(row.file)
    weights = f.with_suffix(".bin")
    return (f.stat().st_size + (weights.stat().st_size if weights.is_file() else 0)) / 1e6


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
               models: Sequence[str] | None = None, status: Callable[[str], None] | None = None) -> ZooReport:
    """Every family at its headline widths (and, unless ``quick``, V1/V2 resolutions), measured on
    the fastest installed backend. ``quick``: headline widths, fewer iterations, and the fastest of
    the runtimes that export in a second (``QUICK_BACKENDS``); finishes in about a minute."""
    names = list(models or (HEADLINE if quick else HEADLINE + RESOLUTIONS))
    if quick and backends is None:  # runtimes whose export takes about a second (LiteRT's takes ~10 s)
        backends = [b for b in QUICK_BACKENDS if b in benchmod.installed_backends(None)[0]] or None
    backend = fastest_backend(backends, status=status)
    warmup, iters, rounds = (5, 30, 3) if quick else (50, 300, 10)
    report = benchmod.bench(names, backends=[backend], threads=threads, warmup=warmup, iters=iters, rounds=rounds,
                            status=status)
    entries = _entries(report)
    frontier(entries)
    return ZooReport(entries, backend, report.machine, dict(report.settings, quick=quick))


@dataclass
class Selection:
    fits: list[Entry]
    rejected: list[tuple[Entry, str]]
    budget: dict
    backend: str
    machine: dict

    def to_dict(self) -> dict:
        return {"budget": self.budget, "backend": self.backend, "machine": self.machine,
                "fits": [e.to_dict() for e in self.fits],
                "rejected": [dict(e.to_dict(), reason=why) for e, why in self.rejected]}


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


def select(budget_ms: float, *, backend: str | None = None, max_params: str | float | None = None,
           max_size_mb: float | None = None, precisions: Sequence[str] = ("fp32", "int8"), threads: int = 1,
           models: Sequence[str] | None = None, quick: bool = True,
           status: Callable[[str], None] | None = None) -> Selection:
    """The variants x precisions that fit the budget, best published top-1 first (see module doc)."""
    if budget_ms <= 0:
        raise UsageError(f"--budget-ms must be > 0, got {budget_ms}")
    params_cap = parse_count(max_params)
    if params_cap is not None and params_cap <= 0:
        raise UsageError(f"--max-params must be > 0, got {max_params}")
    if max_size_mb is not None and max_size_mb <= 0:
        raise UsageError(f"--max-size-mb must be > 0, got {max_size_mb}")
    names = list(models or [n for n, v in VARIANTS.items() if v.top1 is not None])
    backend = backend or fastest_backend(status=status)
    precisions = [p for p in precisions if p in benchmod.SUPPORTED.get(backend, ())]
    if not precisions:
        raise UsageError(f"backend {backend} offers none of the requested precisions")
    warmup, iters, rounds = (5, 30, 3) if quick else (50, 300, 10)
    entries: list[Entry] = []
    fp32 = [p for p in precisions if p == "fp32"]
    rest = [p for p in precisions if p != "fp32"]
    if fp32:
        entries += _entries(benchmod.bench(names, backends=[backend], precisions=fp32, threads=threads,
                                           warmup=warmup, iters=iters, rounds=rounds, status=status))
    if rest:  # lower precisions are at most a few times faster: skip what cannot fit even so
        hopeless = {e.name for e in entries if e.median_ms > 4 * budget_ms}
        todo = [n for n in names if n not in hopeless]
        if todo:
            rep = benchmod.bench(todo, backends=[backend], precisions=rest, threads=threads, warmup=warmup,
                                 iters=iters, rounds=rounds, status=status)
            entries += _entries(rep)
    fits, rejected = [], []
    for e in entries:
        why = []
        if e.median_ms > budget_ms:
            why.append(f"{e.median_ms:.2f} ms > {budget_ms:g} ms")
        if params_cap is not None and e.params > params_cap:
            why.append(f"{e.params / 1e6:.2f}M params > {params_cap / 1e6:g}M")
        if max_size_mb is not None and e.size_mb > max_size_mb:
            why.append(f"{e.size_mb:.1f} MB > {max_size_mb:g} MB")
        (rejected.append((e, "; ".join(why))) if why else fits.append(e))
    frontier(entries)
    fits.sort(key=lambda e: (-(e.top1 or 0), e.median_ms))
    budget = dict(budget_ms=budget_ms, max_params=params_cap, max_size_mb=max_size_mb, precisions=list(precisions),
                  threads=threads)
    return Selection(fits, rejected, budget, backend, latency.machine_info())


def plot(entries: Sequence[Entry], path: str | os.PathLike, *, title: str, budget_ms: float | None = None) -> Path:
    """Top-1 against latency and against MACs, one colour per family, the frontier drawn (PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    pts = [e for e in entries if e.top1 is not None]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    families = sorted({e.family for e in pts})
    colours = dict(zip(families, plt.cm.tab10.colors, strict=False))
    for ax, xkey, xlabel in ((axes[0], "median_ms", "latency, median ms"), (axes[1], "macs", "MACs (M)")):
        for fam in families:
            group = [e for e in pts if e.family == fam]
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
