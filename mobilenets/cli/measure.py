"""Verbs that measure and choose: ``bench``, ``zoo`` and ``select``.

Thin layers over ``mobilenets.measure.bench`` and ``mobilenets.measure.choose``: parse the
options, check every output path before anything is measured, show a progress bar on stderr,
print a table (or, with ``--json``, the result as JSON on stdout), write files with ``-o``.
The three verbs share the measurement cache; ``--fresh`` measures again.
"""
from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ..core.errors import UsageError
from ..core.files import check_parent
from ..deploy.runtimes import BACKENDS
from ..measure import latency
from ..measure.bench import bench, check_output
from ..measure.choose import PROBE, Selection, ZooReport, plot, select, write_json, zoo_report
from ..models import match_models
from . import common, options
from .common import console, err_console

DEFAULT_MODELS = ["mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"]
Fresh = Annotated[bool, typer.Option("--fresh", help="Measure again instead of reading this machine's "
                                                     "earlier figures from the measurement cache.")]


def _split(text: str | None) -> list[str] | None:
    return [p.strip() for p in text.split(",") if p.strip()] if text else None


@contextlib.contextmanager
def _progress() -> Iterator:
    """A progress callback drawing a bar on stderr (what is being exported or timed, elapsed time
    and an estimate of the time left); None when stderr is not a terminal."""
    if not err_console.is_terminal:
        yield None
        return
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task("starting", total=None)

        def update(label: str, done: float, total: float) -> None:
            bar.update(task, description=label, completed=done, total=total or None)
        yield update


def _when(row) -> str:
    """"now", or the date of a figure read back from the measurement cache."""
    return row.measured_at[:10] if row.cached else "now"


def _dump(obj: dict) -> None:
    print(json.dumps(obj, indent=1))


def bench_cmd(
    models: Annotated[list[str] | None, typer.Argument(
        help="model names, checkpoints, run directories or exported files (default: V1, V2, V3-L, V3-S 1.0)")] = None,
    backend: Annotated[str | None, typer.Option(help="comma list of " + ",".join(BACKENDS) + " (default: every "
                                                "installed one that runs here, but compile; with --device cuda: "
                                                "torch, cudagraphs, onnxruntime, tensorrt)")] = None,
    threads: options.Threads = 1,
    batch_size: options.BatchSize = 1,
    resolution: Annotated[int | None, typer.Option(help="input resolution (default: each variant's)")] = None,
    precision: Annotated[str, typer.Option(help="comma list of fp32,bf16,fp16,int8")] = "fp32",
    device: Annotated[str, typer.Option("--device", help="auto (CUDA if present, else CPU), cpu, or cuda[:N]: "
                                        "on CUDA the torch backends (eager, torch.compile, CUDA graphs) and "
                                        "ONNX Runtime's CUDA/TensorRT providers are timed")] = "auto",
    warmup: Annotated[int, typer.Option(help="untimed runs per session")] = 50,
    iters: Annotated[int, typer.Option(help="timed runs per session")] = 1000,
    rounds: Annotated[int, typer.Option(help="interleaved rounds the timed runs are split into")] = 10,
    peers: Annotated[bool, typer.Option("--peers", help="also time torchvision/timm's own models")] = False,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="save the report: .json (everything: "
                                                "machine, settings, rows) or .csv (the rows)")] = None,
    csv: Annotated[Path | None, typer.Option("--csv", help="save the rows as CSV")] = None,
    as_json: options.Json = False,
    fresh: Fresh = False,
) -> None:
    """Latency of models on the installed runtimes: median, mean, p90, spread; ratios against peers."""
    check_output(output)
    check_output(csv, (".csv",))
    names = models or DEFAULT_MODELS
    with _progress() as progress:
        report = bench(names, backends=_split(backend), precisions=_split(precision) or ["fp32"], threads=threads,
                       batch=batch_size, resolution=resolution, warmup=warmup, iters=iters, rounds=rounds,
                       peers=peers, fresh=fresh, progress=progress, device=device)
    if as_json:
        _dump(report.to_dict())
    else:
        _print_bench(report)
    _notes(report.warnings, report.skipped)
    for path, write in ((output, report.write), (csv, report.write_csv)):
        if path:
            err_console.print(f"wrote {write(path)}", highlight=False)


def _print_bench(report) -> None:
    m, s = report.machine, report.settings
    where = (f"{m['cpu']} ({m['cores']} cores), {s['threads']} thread(s)" if s.get("device", "cpu") == "cpu"
             else latency.device_name(s["device"]))
    table = Table(title=f"latency on {where}, batch {s['batch']}")
    cols = ["model", "impl", "backend", "prec", "median ms", "mean", "p90", "spread", "vs best peer", "GEMM floor ms",
            "measured"]
    if s["batch"] > 1:
        cols.insert(8, "img/s")
    for c in cols:
        table.add_column(c, justify="left" if c in ("model", "impl", "backend", "prec", "measured") else "right",
                         no_wrap=c in ("model", "measured"))
    for r in sorted(report.rows, key=lambda r: (r.model, r.impl != "mobilenets", r.timing.median_ms)):
        t = r.timing
        peer = report.best(r.model, impl="peer", precision="fp32")
        ratio = f"{peer.timing.median_ms / t.median_ms:.2f}x" if peer and r.impl == "mobilenets" else ""
        cells = [r.model, r.impl, r.backend, r.precision, f"{t.median_ms:.2f}", f"{t.mean_ms:.2f}",
                 f"{t.p90_ms:.2f}", f"[yellow]{t.spread:.0%}[/]" if t.noisy else f"{t.spread:.0%}", ratio,
                 f"{r.floor_ms:.2f}" if r.floor_ms else "-", _when(r)]
        if s["batch"] > 1:
            cells.insert(8, f"{t.throughput:.0f}")
        table.add_row(*cells)
    console.print(table)
    console.print(f"vs best peer: the fastest fp32 peer (torchvision/timm on any backend) / this row; >1 means ours "
                  f"is faster. GEMM floor: MACs x 2 / (this machine's fp32 GEMM rate on one core, "
                  f"{s['gemm_gflops']:.0f} GFLOP/s, x threads). measured: now, or the date of a figure read back "
                  f"from the measurement cache (--fresh measures again).", style="dim")


def _notes(warnings: list[str], skipped: list[str]) -> None:
    for w in warnings:
        err_console.print(f"[yellow]warning:[/] {w}", highlight=False, soft_wrap=True)
    for s in skipped:
        err_console.print(f"[dim]skipped: {s}[/]", highlight=False, soft_wrap=True)


def _check_folder(path: Path) -> Path:
    if path.exists() and not path.is_dir():
        raise UsageError(f"cannot write into {path}: it is a file, not a folder")
    check_parent(path / "zoo.json")
    return path


def zoo_cmd(
    quick: Annotated[bool, typer.Option("--quick", help="headline widths only, short timing")] = False,
    backend: Annotated[str | None, typer.Option(help="comma list of backends to choose the fastest from "
                                                "(default: every installed one)")] = None,
    threads: options.Threads = 1,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="folder for zoo.json and zoo.png "
                                                "(default: zoo-report)")] = None,
    as_json: options.Json = False,
    fresh: Fresh = False,
) -> None:
    """The zoo report: every family's params, MACs, published top-1 and latency measured here, with a chart."""
    folder = _check_folder(output or Path("zoo-report"))
    with _progress() as progress:
        report = zoo_report(quick=quick, backends=_split(backend), threads=threads, fresh=fresh, progress=progress)
    if as_json:
        _dump(report.to_dict())
    else:
        _print_zoo(report, threads)
    _notes([], report.settings["skipped"])
    js = write_json(report.to_dict(), folder / "zoo.json")
    png = plot(report.entries, folder / "zoo.png",
               title=f"MobileNets: published ImageNet top-1 vs latency on {report.backend} ({report.machine['cpu']}, "
                     f"{threads} thread) and vs MACs")
    err_console.print(f"wrote {js} and {png}", highlight=False)


def _print_zoo(report: ZooReport, threads: int) -> None:
    table = Table(title=f"the MobileNet zoo on {report.machine['cpu']}: {report.backend}, fp32, "
                        f"{threads} thread(s), batch 1  (* = on the accuracy/latency frontier)")
    for c in ("model", "width", "res", "params M", "MACs M", "top-1", "median ms", "p90 ms", "top-1 per ms",
              "measured"):
        table.add_column(c, justify="left" if c in ("model", "measured") else "right",
                         no_wrap=c in ("model", "measured"))
    for e in report.entries:
        table.add_row(("* " if e.frontier else "  ") + e.name, f"{e.width:g}", str(e.resolution),
                      f"{e.params / 1e6:.2f}", f"{e.macs / 1e6:.0f}", f"{e.top1:.1f}" if e.top1 else "-",
                      f"{e.median_ms:.2f}", f"{e.p90_ms:.2f}", f"{e.top1 / e.median_ms:.1f}" if e.top1 else "-",
                      _when(e))
    console.print(table)
    console.print(f"runtime: the installed one that runs {PROBE} fastest (every installed runtime competes). "
                  f"measured: now, or the date of a figure read back from the measurement cache (--fresh measures "
                  f"again).",
                  style="dim")


def select_cmd(
    budget_ms: Annotated[float, typer.Option("--budget-ms", help="latency budget, median ms per image")],
    backend: Annotated[str | None, typer.Option(help="runtime for every precision (default: for each precision, "
                                                "the installed one that runs it fastest)")] = None,
    max_params: Annotated[str | None, typer.Option(help="parameter cap, e.g. 3M or 500k")] = None,
    max_size_mb: Annotated[float | None, typer.Option(help="cap on the exported file's size (MB)")] = None,
    precision: Annotated[str, typer.Option(help="comma list of fp32,bf16,int8 to consider")] = "fp32,int8",
    models: Annotated[str | None, typer.Option("--models", help="comma list of names or patterns to consider, "
                                               "e.g. 'v3*,mobilenext' (default: every variant with a "
                                               "published top-1)")] = None,
    threads: options.Threads = 1,
    top: Annotated[int, typer.Option(min=1, help="how many fitting entries to find and list; the search stops "
                                                 "there")] = 15,
    max_seconds: Annotated[float, typer.Option(min=0, help="seconds the command may take, start-up included "
                                                       "(0: no limit); what was measured is cached, so running "
                                                       "again continues")] = 60,
    plot_path: Annotated[Path | None, typer.Option("--plot", help="save the frontier plot as PNG")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="save the selection as JSON")] = None,
    as_json: options.Json = False,
    fresh: Fresh = False,
) -> None:
    """The variants (family x width x resolution x precision) that fit a budget, best published top-1 first."""
    check_output(output, (".json",))
    check_output(plot_path, (".png",))
    names = None
    if models:
        names = list(dict.fromkeys(n for pattern in _split(models) for n in match_models(pattern)))
    with _progress() as progress:
        sel = select(budget_ms, backend=backend, max_params=max_params, max_size_mb=max_size_mb,
                     precisions=_split(precision) or ["fp32"], threads=threads, models=names, top=top, fresh=fresh,
                     progress=progress,
                     max_seconds=max_seconds or None, spent_s=common.STARTUP_S)
    if as_json:
        _dump(sel.to_dict())
    else:
        _print_selection(sel, budget_ms, max_params, max_size_mb, top)
    if output:
        err_console.print(f"wrote {write_json(sel.to_dict(), output)}", highlight=False)
    if plot_path:
        entries = sel.fits + [e for e, _ in sel.rejected]
        png = plot(entries, plot_path, title=f"fits {budget_ms:g} ms on {sel.backend}", budget_ms=budget_ms)
        err_console.print(f"wrote {png}", highlight=False)
    if not sel.fits:
        raise typer.Exit(1)


def _print_selection(sel: Selection, budget_ms: float, max_params, max_size_mb, top: int) -> None:
    table = Table(title=f"{len(sel.fits)} fit {budget_ms:g} ms on {sel.backend}"
                        + (f", <= {max_params} params" if max_params else "")
                        + (f", <= {max_size_mb:g} MB" if max_size_mb else "")
                        + f" ({len(sel.rejected)} measured over it, {len(sel.unmeasured)} not measured)")
    for c in ("#", "model", "precision", "top-1 (fp32, published)", "median ms", "params M", "size MB", "MACs M",
              "measured"):
        table.add_column(c, justify="left" if c in ("model", "precision", "measured") else "right",
                         no_wrap=c in ("model", "measured"))
    for i, e in enumerate(sel.fits[:top], 1):
        table.add_row(str(i), ("* " if e.frontier else "  ") + e.name, e.precision,
                      f"{e.top1:.1f}" if e.top1 is not None else "-",
                      f"{e.median_ms:.2f}", f"{e.params / 1e6:.2f}", f"{e.size_mb:.1f}", f"{e.macs / 1e6:.0f}",
                      _when(e))
    console.print(table)
    if not sel.fits:
        fastest = min((e for e, _ in sel.rejected), key=lambda e: e.median_ms, default=None)
        err_console.print("nothing fits" + (f"; the fastest measured is {fastest.name} {fastest.precision} at "
                                            f"{fastest.median_ms:.2f} ms" if fastest else ""))
    if any(e.precision == "int8" for e in sel.fits[:top]):
        console.print("int8 rows show the fp32 published top-1; measure the int8 loss on your data with "
                      "`mobilenets eval` on the exported file.", style="dim")
    for note in sel.notes:
        console.print(note, style="dim", highlight=False)
    if sel.unmeasured:
        console.print(f"not measured: {len(sel.unmeasured)} entries that cannot fit (GEMM floor, a larger variant of "
                      f"the family over budget), cannot enter the top {top}, or whose fp32 fits already; --json "
                      f"gives each reason.", style="dim")


def register(app: typer.Typer) -> None:
    app.command("bench")(bench_cmd)
    app.command("zoo")(zoo_cmd)
    app.command("select")(select_cmd)
