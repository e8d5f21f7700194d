"""Verbs that train and evaluate: ``train`` and ``eval``.

Thin layers over ``mobilenets.train.fit`` and ``mobilenets.evaluate.evaluate``. The options of
``train`` are not written here: each is generated from a field of ``TrainConfig`` and its metadata
(``train.config``), so adding a field adds the option, its help, its recipe defaults and its checks.
Exit codes: 0 done, 1 training diverged (NaN/inf loss; the last good checkpoint is kept), 2 bad
input. Under ``torchrun`` the same command trains with DistributedDataParallel.
"""
from __future__ import annotations

import contextlib
import inspect
import json
import os
import time
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ..evaluate import evaluate
from ..train import fit
from ..train.config import (
    OPTIONS,
    Option,
    cli_flags,
    cli_type,
    flag,
    range_text,
    recipe_values,
    resolve_config,
    spelled,
)
from ..train.loop import TrainingDiverged
from ..train.recipes import RECIPES, get_recipe
from ..train.report import Reporter
from . import options
from .common import console, err_console, fail

PANELS = {"model": "Model", "data": "Data", "optimisation": "Optimisation", "schedule": "Schedule",
          "augmentation": "Augmentation", "system": "System", "evaluation": "Evaluation"}
SHORTCUT = "__shortcut"  # suffix of the parameter of a field's shortcut flag (--cifar-stem)


class RichReporter(Reporter):
    """A progress bar per epoch with throughput (images/s), loss and ETA."""

    def __init__(self):
        super().__init__()
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[ips]:>6.0f} img/s  loss {task.fields[loss]:.4f}"),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=err_console)
        self.task = None
        self.images, self.t0 = 0, 0.0
        self.started = False

    def log(self, message: str) -> None:
        (self.progress.console if self.started else err_console).print(message, highlight=False)

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        if not self.started:
            self.progress.start()
            self.started = True
        self.images, self.t0 = 0, time.perf_counter()
        self.task = self.progress.add_task(f"epoch {epoch}/{epochs}", total=steps, ips=0.0, loss=float("nan"))

    def step(self, images: int, loss: float) -> None:
        self.images += images
        ips = self.images / max(time.perf_counter() - self.t0, 1e-9)
        self.progress.update(self.task, advance=1, ips=ips, loss=loss)

    def epoch_end(self, row: dict) -> None:
        val = f"val top-1 {row['val_top1']:.2f}%" if row["val_top1"] is not None else "not validated"
        self.progress.update(self.task, description=f"epoch {row['epoch']}/{row['epochs']}  {val}")

    def close(self) -> None:
        if self.started:
            self.progress.stop()


@contextlib.contextmanager
def _warnings_as_lines():
    """Skipped-image warnings as one yellow line each, not Python's warning format."""
    old = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        err_console.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = old


# ------------------------------------------------------------------------ train's options, generated

def _defaults(name: str) -> str:
    """The value each recipe gives field ``name`` (what applies when the option is not given)."""
    if OPTIONS[name].required:
        return "[required]"
    if name == "recipe":
        return "[default: default]"
    values = {recipe: spelled(name, recipe_values(recipe)[name]) for recipe in RECIPES}
    if set(values.values()) == {"unset"}:
        return ""
    base = values["default"]
    others = [f"{recipe}: {v}" for recipe, v in values.items() if v != base]
    return f"[default: {base}" + (f" (recipe default); {'; '.join(others)}]" if others else "]")


def _help(name: str, opt: Option) -> str:
    parts = [opt.help]
    if opt.choices is not None and not all(spelled(name, c) in opt.help for c in opt.choices):
        parts.append(f"({', '.join(spelled(name, c) for c in opt.choices)})")
    limits = range_text(opt)
    if limits:
        parts.append(f"({limits})")
    return escape(" ".join([*parts, _defaults(name)]).strip())


def _parameters() -> list[inspect.Parameter]:
    """One parameter per field of ``TrainConfig`` (and per shortcut flag), from its metadata. Every
    default is None ("not given": the recipe's value applies); the checks are the config's own, so
    that a bad value is one line naming the option."""
    params = []
    for name, opt in OPTIONS.items():
        panel = PANELS.get(opt.group)
        if opt.argument:
            info = typer.Argument(None, help=escape(f"{opt.help} {_defaults(name)}"), show_default=False)
        else:
            info = typer.Option(None, *cli_flags(name), help=_help(name, opt), show_default=False,
                                rich_help_panel=panel)
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=info,
                                        annotation=cli_type(name) | None))
        if opt.shortcut is not None:
            switch, _, help_ = opt.shortcut
            params.append(inspect.Parameter(name + SHORTCUT, inspect.Parameter.KEYWORD_ONLY, annotation=bool | None,
                                            default=typer.Option(None, switch, help=help_, show_default=False,
                                                                 rich_help_panel=panel)))
    model = next(p for p in params if p.name == "model")
    params.remove(model)
    extra = [inspect.Parameter("resume", inspect.Parameter.KEYWORD_ONLY, annotation=Path | None, default=typer.Option(
                 None, "--resume", help="continue the run in this directory (its options are the run's own)")),
             inspect.Parameter("as_json", inspect.Parameter.KEYWORD_ONLY, annotation=options.Json, default=False)]
    return [model.replace(kind=inspect.Parameter.POSITIONAL_OR_KEYWORD), *params, *extra]


def _given(values: dict) -> dict:
    """The config fields the user gave (shortcut flags folded into their field)."""
    given = {k: v for k, v in values.items() if k in OPTIONS and v is not None}
    for name, opt in OPTIONS.items():
        if opt.shortcut is not None and values.get(name + SHORTCUT):
            spelled, value, _ = opt.shortcut
            if given.get(name, value) != value:
                fail(f"{spelled} means {flag(name)} {value}; give one of them")
            given[name] = value
    return given


def train_cmd(model=None, **values) -> None:
    """Train a MobileNet (one process, or many under torchrun); writes a run directory."""
    resume, as_json = values.pop("resume"), values.pop("as_json")
    given = _given({"model": model, **values})
    with _warnings_as_lines():
        cfg = None
        if resume is not None:
            if given:
                fail(f"--resume continues a run with its own options; drop {', '.join(map(flag, given))}")
        else:
            recipe = given.pop("recipe", "default")
            missing = [flag(n) for n, o in OPTIONS.items() if o.required and n not in given]
            if missing or ("model" not in given and "model" not in get_recipe(recipe)):
                fail(f"give MODEL and {' '.join(missing) or '--data'} (or --resume RUN_DIR)")
            cfg = resolve_config(recipe, **given)
        reporter = RichReporter() if err_console.is_terminal and not as_json else Reporter()
        try:
            result = fit(cfg, resume=resume, reporter=reporter)
        except TrainingDiverged as exc:
            fail(str(exc), code=1)
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports
        return
    if as_json:
        typer.echo(json.dumps({k: v for k, v in result.to_dict().items() if k != "history"}, indent=1))
        return
    last = result.last
    table = Table(title=f"run {result.run_dir}")
    for col in ("epochs", "best top-1", "best epoch", "last top-1", "last top-5", "img/s", "time", "skipped"):
        table.add_column(col, justify="right")
    table.add_row(str(last.get("epoch", 0)), f"{result.best_top1:.2f}%", str(result.best_epoch),
                  f"{last.get('val_top1') or 0:.2f}%", f"{last.get('val_top5') or 0:.2f}%",
                  f"{last.get('images_per_s', 0):.0f}", f"{result.wall_time_s / 60:.1f} min", str(len(result.skipped)))
    console.print(table)
    for s in result.skipped:
        err_console.print(f"[yellow]skipped[/] {s['path']}: {s['reason']}", highlight=False, soft_wrap=True)
    if result.stopped:
        console.print(result.stopped, highlight=False)
    console.print(f"weights: {result.run_dir / 'best.safetensors'} (best), {result.run_dir / 'last.safetensors'}",
                  highlight=False)


train_cmd.__signature__ = inspect.Signature(_parameters())
train_cmd.__annotations__ = {}


def eval_cmd(
    target: Annotated[str, typer.Argument(help="a training run directory, a checkpoint, an exported file (.onnx, "
                                               ".xml, .tflite), or a model name with --weights")],
    data: Annotated[str, typer.Option(help="cifar10:PATH, cifar100:PATH, folder:PATH or synthetic[:N]")],
    weights: Annotated[str | None, typer.Option("--weights", "-w", help="the checkpoint of the model named")]
    = None,
    batch_size: options.BatchSize = 100,
    device: options.Device = "auto",
    strict: Annotated[bool, typer.Option("--strict", help="an unreadable image is an error, not skipped")] = False,
    val_size: Annotated[str | None, typer.Option(help=escape("a folder without val/: the images training held out, "
                                                        "a count or a fraction < 1, or none: all of train/ [default: "
                                                        "as the checkpoint records]"), show_default=False)] = None,
    seed: Annotated[int | None, typer.Option(help="seed of that held-out split (default: the checkpoint's)")] = None,
    tta: Annotated[str, typer.Option(help="views scored: none, mirror (each image and its mirror) or mirror-shift "
                                          "(also shifted 1 px both ways)")] = "none",
    as_json: options.Json = False,
) -> None:
    """Top-1, top-5 and loss of a trained model (run directory, checkpoint or exported file) on a data set."""
    with _warnings_as_lines():
        res = evaluate(target, data, weights=weights, batch_size=batch_size, device=device, strict=strict,
                       val_size=val_size, seed=seed, tta=tta)
    if as_json:
        typer.echo(json.dumps(res, indent=1))
        return
    table = Table(title=f"{res['weights'] or target} on {data} ({res['split']})")
    cols = ("images", f"top-1 ({tta} TTA)" if tta != "none" else "top-1", "top-5", "loss", "skipped")
    cells = [str(res["images"]), f"{res['top1']:.2f}%", f"{res['top5']:.2f}%", f"{res['loss']:.4f}",
             str(len(res["skipped"]))]
    if tta != "none":
        cols, cells = cols + ("top-1 single view",), cells + [f"{res['top1_single']:.2f}%"]
    for col in cols:
        table.add_column(col, justify="right")
    table.add_row(*cells)
    console.print(table)
    for s in res["skipped"]:
        err_console.print(f"[yellow]skipped[/] {s['path']}: {s['reason']}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("train")(train_cmd)
    app.command("eval")(eval_cmd)
