"""Verbs that measure and choose: ``bench``, ``zoo`` and ``select``.

Thin layers over ``mobilenets.measure.bench`` and ``mobilenets.measure.choose``: parse the
options, show progress on stderr, print a table, save JSON/CSV/PNG when asked.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from . import console, err_console


def _split(text: str | None) -> list[str] | None:
    return [p.strip() for p in text.split(",") if p.strip()] if text else None


def _status():
    """A callback that prints progress lines on stderr (quiet when stderr is not a terminal)."""
    if not err_console.is_terminal:
        return None
    return lambda msg: err_console.print(f"[dim]{msg}[/]", highlight=False)


def bench_cmd(
    models: Annotated[list[str] | None, typer.Argument(help="model names (default: V1, V2, V3-L, V3-S 1.0)")] = None,
    backend: Annotated[str | None, typer.Option(help="comma list of torch,compile,onnxruntime,openvino,litert "
                                                "(default: every installed one but compile)")] = None,
    threads: Annotated[int, typer.Option(help="threads per runtime")] = 1,
    batch: Annotated[int, typer.Option(help="images per run")] = 1,
    resolution: Annotated[int | None, typer.Option(help="input resolution (default: each variant's)")] = None,
    precision: Annotated[str, typer.Option(help="comma list of fp32,bf16,int8")] = "fp32",
    warmup: Annotated[int, typer.Option(help="untimed runs per session")] = 50,
    iters: Annotated[int, typer.Option(help="timed runs per session")] = 1000,
    rounds: Annotated[int, typer.Option(help="interleaved rounds the timed runs are split into")] = 10,
    peers: Annotated[bool, typer.Option("--peers", help="also time torchvision/timm's own models")] = False,
    csv: Annotated[Path | None, typer.Option("--csv", help="save the rows as CSV")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="save everything (machine, settings) as JSON")] = None,
) -> None:
    """Latency of models on the installed runtimes: median, mean, p90, spread; ratios against peers."""
    from ..measure.bench import bench
    names = models or ["mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"]
    report = bench(names, backends=_split(backend), precisions=_split(precision) or ["fp32"], threads=threads,
                   batch=batch, resolution=resolution, warmup=warmup, iters=iters, rounds=rounds, peers=peers,
                   status=_status())
    _print_bench(report)
    for path, write in ((csv, report.write_csv), (json_out, report.write_json)):
        if path:
            console.print(f"wrote {write(path)}", highlight=False)


def _print_bench(report) -> None:
    m = report.machine
    table = Table(title=f"latency on {m['cpu']} ({m['cores']} cores), {report.settings['threads']} thread(s), "
                        f"batch {report.settings['batch']}")
    cols = ["model", "impl", "backend", "prec", "median ms", "mean", "p90", "spread", "vs best peer", "floor ms"]
    if report.settings["batch"] > 1:
        cols.insert(8, "img/s")
    for c in cols:
        table.add_column(c, justify="left" if c in ("model", "impl", "backend", "prec") else "right",
                         no_wrap=c == "model")
    for r in sorted(report.rows, key=lambda r: (r.model, r.impl != "mobilenets", r.timing.median_ms)):
        t = r.timing
        peer = report.best(r.model, impl="peer", precision="fp32")
        ratio = f"{peer.timing.median_ms / t.median_ms:.2f}x" if peer and r.impl == "mobilenets" else ""
        cells = [r.model, r.impl, r.backend, r.precision, f"{t.median_ms:.2f}", f"{t.mean_ms:.2f}",
                 f"{t.p90_ms:.2f}", f"[yellow]{t.spread:.0%}[/]" if t.noisy else f"{t.spread:.0%}", ratio,
                 f"{r.floor_ms:.2f}" if r.floor_ms else "-"]
        if report.settings["batch"] > 1:
            cells.insert(8, f"{t.throughput:.0f}")
        table.add_row(*cells)
    console.print(table)
    console.print("vs best peer: the fastest fp32 peer (torchvision/timm on any backend) / this row; "
                  ">1 means ours is faster. floor: MACs x 2 / (32 FLOP/cycle x clock x threads).", style="dim")
    for w in report.warnings:
        err_console.print(f"[yellow]warning:[/] {w}", highlight=False, soft_wrap=True)
    for s in report.skipped:
        err_console.print(f"[dim]skipped: {s}[/]", highlight=False, soft_wrap=True)


def zoo_cmd(
    quick: Annotated[bool, typer.Option("--quick", help="headline widths only, short timing (about a minute)")] = False,
    backend: Annotated[str | None, typer.Option(help="comma list of backends to choose the fastest from")] = None,
    threads: Annotated[int, typer.Option(help="threads per runtime")] = 1,
    output: Annotated[Path, typer.Option(help="directory for zoo.json and zoo.png")] = Path("zoo-report"),
) -> None:
    """The zoo report: every family's params, MACs, published top-1 and latency measured here, with a chart."""
    from ..measure.choose import plot, write_json, zoo_report
    report = zoo_report(quick=quick, backends=_split(backend), threads=threads, status=_status())
    table = Table(title=f"the MobileNet zoo on {report.machine['cpu']}: {report.backend}, fp32, "
                        f"{threads} thread(s), batch 1  (* = on the accuracy/latency frontier)")
    for c in ("model", "width", "res", "params M", "MACs M", "top-1", "median ms", "p90 ms", "top-1 per ms"):
        table.add_column(c, justify="left" if c == "model" else "right", no_wrap=c == "model")
    for e in report.entries:
        table.add_row(("* " if e.frontier else "  ") + e.name, f"{e.width:g}", str(e.resolution),
                      f"{e.params / 1e6:.2f}", f"{e.macs / 1e6:.0f}", f"{e.top1:.1f}" if e.top1 else "-",
                      f"{e.median_ms:.2f}", f"{e.p90_ms:.2f}", f"{e.top1 / e.median_ms:.1f}" if e.top1 else "-")
    console.print(table)
    js = write_json(report.to_dict(), output / "zoo.json")
    png = plot(report.entries, output / "zoo.png",
               title=f"MobileNets: published ImageNet top-1 vs latency on {report.backend} ({report.machine['cpu']}, "
                     f"{threads} thread) and vs MACs")
    console.print(f"wrote {js} and {png}", highlight=False)


def select_cmd(
    budget_ms: Annotated[float, typer.Option("--budget-ms", help="latency budget, median ms per image")],
    backend: Annotated[str | None, typer.Option(help="runtime (default: the fastest installed)")] = None,
    max_params: Annotated[str | None, typer.Option(help="parameter cap, e.g. 3M or 500k")] = None,
    max_size_mb: Annotated[float | None, typer.Option(help="cap on the exported file's size (MB)")] = None,
    precision: Annotated[str, typer.Option(help="comma list of fp32,bf16,int8 to consider")] = "fp32,int8",
    threads: Annotated[int, typer.Option(help="threads per runtime")] = 1,
    top: Annotated[int, typer.Option(help="how many fitting variants to list")] = 15,
    plot_path: Annotated[Path | None, typer.Option("--plot", help="save the frontier plot as PNG")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="save the selection as JSON")] = None,
) -> None:
    """The variants (family x width x resolution x precision) that fit a budget, best published top-1 first."""
    from ..measure.bench import installed_backends
    from ..measure.choose import plot, select, write_json
    if backend:
        installed_backends([backend])  # unknown backend -> UsageError
    sel = select(budget_ms, backend=backend, max_params=max_params, max_size_mb=max_size_mb,
                 precisions=_split(precision) or ["fp32"], threads=threads, status=_status())
    table = Table(title=f"{len(sel.fits)} of {len(sel.fits) + len(sel.rejected)} fit {budget_ms:g} ms on "
                        f"{sel.backend}" + (f", <= {max_params} params" if max_params else "")
                        + (f", <= {max_size_mb:g} MB" if max_size_mb else ""))
    for c in ("#", "model", "precision", "top-1 (fp32, published)", "median ms", "params M", "size MB", "MACs M"):
        table.add_column(c, justify="left" if c in ("model", "precision") else "right", no_wrap=c == "model")
    for i, e in enumerate(sel.fits[:top], 1):
        table.add_row(str(i), ("* " if e.frontier else "  ") + e.name, e.precision, f"{e.top1:.1f}",
                      f"{e.median_ms:.2f}", f"{e.params / 1e6:.2f}", f"{e.size_mb:.1f}", f"{e.macs / 1e6:.0f}")
    console.print(table)
    if not sel.fits:
        fastest = min((e for e, _ in sel.rejected), key=lambda e: e.median_ms, default=None)
        err_console.print("nothing fits" + (f"; the fastest is {fastest.name} {fastest.precision} at "
                                            f"{fastest.median_ms:.2f} ms" if fastest else ""))
    if any(e.precision == "int8" for e in sel.fits[:top]):
        console.print("int8 rows show the fp32 published top-1; measure the int8 loss on your data with "
                      "`mobilenets eval` on the exported file.", style="dim")
    if json_out:
        console.print(f"wrote {write_json(sel.to_dict(), json_out)}", highlight=False)
    if plot_path:
        entries = sel.fits + [e for e, _ in sel.rejected]
        png = plot(entries, plot_path, title=f"fits {budget_ms:g} ms on {sel.backend}", budget_ms=budget_ms)
        console.print(f"wrote {png}", highlight=False)
    if not sel.fits:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("bench")(bench_cmd)
    app.command("zoo")(zoo_cmd)
    app.command("select")(select_cmd)
