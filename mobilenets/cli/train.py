"""Verbs that train and evaluate: ``train`` and ``eval``.

Thin layers over ``mobilenets.train.fit`` and ``mobilenets.train.evaluate_checkpoint``.
Exit codes: 0 done, 1 training diverged (NaN/inf loss; the last good checkpoint is kept),
2 bad input. Under ``torchrun`` the same command trains with DistributedDataParallel.
"""
from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from . import console, err_console, fail


def _rich_reporter():
    from ..train.engine import Reporter

    class RichReporter(Reporter):
        """A progress bar per epoch with throughput (images/s), loss and ETA."""

        def __init__(self):
            super().__init__()
            self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[ips]:>6.0f} img/s  loss {task.fields[loss]:.4f}"),
                                     TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                     console=err_console)
            self.task = None
            self.images = 0
            self.started = False

        def log(self, message: str) -> None:
            (self.progress.console if self.started else err_console).print(message, highlight=False)

        def epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
            import time
            if not self.started:
                self.progress.start()
                self.started = True
            self.images, self.t0 = 0, time.perf_counter()
            self.task = self.progress.add_task(f"epoch {epoch}/{epochs}", total=steps, ips=0.0, loss=float("nan"))

        def step(self, images: int, loss: float) -> None:
            import time
            self.images += images
            ips = self.images / max(time.perf_counter() - self.t0, 1e-9)
            self.progress.update(self.task, advance=1, ips=ips, loss=loss)

        def epoch_end(self, row: dict) -> None:
            val = f"val top-1 {row['val_top1']:.2f}%" if row["val_top1"] is not None else "not validated"
            self.progress.update(self.task, description=f"epoch {row['epoch']}/{row['epochs']}  {val}")

        def close(self) -> None:
            if self.started:
                self.progress.stop()

    return RichReporter()


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


def train_cmd(
    model: Annotated[str | None, typer.Argument(help="model name, e.g. mobilenet_v3_small (see `mobilenets list`)")]
    = None,
    data: Annotated[str | None, typer.Option(help="cifar10:PATH, cifar100:PATH, folder:PATH (train/ [val/]) "
                                             "or synthetic[:N]")] = None,
    recipe: Annotated[str, typer.Option(help="named preset: baseline (the seed's), default, cifar10_60min")]
    = "default",
    width: Annotated[float | None, typer.Option(help="width multiplier")] = None,
    dropout: Annotated[float | None, typer.Option(help="dropout before the classifier (default: the model's)")]
    = None,
    cifar_stem: Annotated[bool, typer.Option("--cifar-stem", help="the seed's CIFAR stem: stride 1 in the "
                                             "first 3 stride-2 layers (32x32 inputs)")] = False,
    stem_layers: Annotated[int | None, typer.Option(help="how many leading stride-2 layers become stride 1 "
                                                    "(2: output stride 8)")] = None,
    weights: Annotated[str | None, typer.Option("--weights", "-w", help="fine-tune from this checkpoint or "
                                                "weight source (the classifier is re-initialised if needed)")] = None,
    epochs: Annotated[int | None, typer.Option(help="epochs (an upper limit with --time-budget-min)")] = None,
    batch_size: Annotated[int | None, typer.Option(help="images per step and process")] = None,
    micro_batch: Annotated[int | None, typer.Option(help="run each batch through the model in parts of this many "
                                                    "images, gradients summed (BN per part; 0: whole)")] = None,
    lr: Annotated[float | None, typer.Option(help="peak learning rate")] = None,
    optimizer: Annotated[str | None, typer.Option(help="sgd, rmsprop or adamw")] = None,
    schedule: Annotated[str | None, typer.Option(help="step, cosine, onecycle, linear or constant")] = None,
    warmup_epochs: Annotated[float | None, typer.Option(help="linear warm-up epochs")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="weight decay (not on BN and biases)")] = None,
    no_decay_depthwise: Annotated[bool | None, typer.Option("--no-decay-depthwise/--decay-depthwise",
                                                            help="no weight decay on depthwise filters "
                                                            "(MobileNetV1 paper)")] = None,
    zero_init_residual: Annotated[bool | None, typer.Option("--zero-init-residual/--no-zero-init-residual",
                                                            help="from scratch: each residual branch's last BN "
                                                            "starts at 0")] = None,
    label_smoothing: Annotated[float | None, typer.Option(help="label smoothing")] = None,
    ema_decay: Annotated[float | None, typer.Option(help="EMA of weights per step (0: off)")] = None,
    flip: Annotated[str | None, typer.Option(help="horizontal flips: random, alternate (each image mirrored every "
                                             "other epoch) or none")] = None,
    cutout: Annotated[int | None, typer.Option(help="cutout square side in pixels (0: off)")] = None,
    policy: Annotated[str | None, typer.Option(help="autoaugment or randaugment")] = None,
    channels_last: Annotated[bool | None, typer.Option("--channels-last/--nchw", help="memory format")] = None,
    bf16: Annotated[str | None, typer.Option(help="bfloat16 autocast: auto, on or off")] = None,
    bf16_pointwise: Annotated[bool | None, typer.Option("--bf16-pointwise/--fp32-pointwise",
                                                        help="bf16 in the 1x1 convolutions only (where the "
                                                        "CPU/GPU has bf16)")] = None,
    fast_depthwise: Annotated[bool | None, typer.Option("--fast-depthwise/--no-fast-depthwise",
                                                        help="CPU: compiled depthwise weight gradients")] = None,
    compile: Annotated[bool | None, typer.Option("--compile/--no-compile",
                                                 help="torch.compile the training step (the first step "
                                                 "compiles, minutes on a CPU)")] = None,
    keep_memory: Annotated[bool | None, typer.Option("--keep-memory/--no-keep-memory",
                                                     help="CPU: malloc keeps freed memory (no page faults "
                                                     "per step; the process keeps its peak size)")] = None,
    tta: Annotated[str | None, typer.Option(help="validation views: none, mirror (each image and its mirror) or "
                                            "mirror-shift (also shifted 1 px both ways)")] = None,
    resize_from: Annotated[int | None, typer.Option(help="progressive resizing: train at this size (px) first, "
                                                    "growing to full size (0: off)")] = None,
    resize_until: Annotated[float | None, typer.Option(help="progressive resizing: full size from this fraction of "
                                                       "the epochs on")] = None,
    val_every: Annotated[int | None, typer.Option(help="validate epoch 1, every N-th epoch and the last")]
    = None,
    resolution: Annotated[int | None, typer.Option(help="input resolution (default: from the data)")] = None,
    preset: Annotated[str | None, typer.Option(help="preprocessing: cifar or imagenet (default: from the data)")]
    = None,
    val_size: Annotated[float | None, typer.Option(help="images held out of train/ when there is no val/ "
                                                   "(a count, or a fraction < 1)")] = None,
    seed: Annotated[int | None, typer.Option(help="seed of init, shuffling, augmentation and the split")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="an unreadable image is an error, not skipped")] = False,
    time_budget_min: Annotated[float | None, typer.Option(help="fit the run, data loading included, in this many "
                                                          "minutes (picks the epochs; 0: none, so a preset "
                                                          "runs exactly --epochs)")] = None,
    workers: Annotated[int | None, typer.Option(help="data loader workers (folders of large images)")] = None,
    threads: Annotated[int | None, typer.Option(help="torch threads per process")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda ...")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="run directory (default runs/train/MODEL)")]
    = None,
    resume: Annotated[Path | None, typer.Option(help="continue the run in this directory")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the run summary as JSON")] = False,
) -> None:
    """Train a MobileNet (one process, or many under torchrun); writes a run directory."""
    from ..train import fit, resolve_config
    from ..train.engine import Reporter, TrainingDiverged

    with _warnings_as_lines():
        if resume is not None:
            cfg = None
        else:
            from ..train import get_recipe
            if data is None or (model is None and "model" not in get_recipe(recipe)):
                fail("give MODEL and --data (or --resume RUN_DIR)")
            bf = {"auto": "auto", "on": True, "off": False, None: None}.get(bf16, "bad")
            if bf == "bad":
                fail(f"--bf16 must be auto, on or off, got {bf16!r}")
            stem = stem_layers if stem_layers is not None else (3 if cifar_stem else None)
            cfg = resolve_config(
                recipe, model=model, data=data, width=width, dropout=dropout, cifar_stem=stem, weights=weights,
                epochs=epochs, batch_size=batch_size, micro_batch=micro_batch, lr=lr, optimizer=optimizer,
                schedule=schedule, warmup_epochs=warmup_epochs, weight_decay=weight_decay,
                no_decay_depthwise=no_decay_depthwise, zero_init_residual=zero_init_residual,
                label_smoothing=label_smoothing,
                ema_decay=ema_decay, flip=flip, cutout=cutout, policy=policy, channels_last=channels_last, bf16=bf,
                bf16_pointwise=bf16_pointwise, fast_depthwise=fast_depthwise, compile=compile,
                keep_memory=keep_memory, tta=tta, val_every=val_every,
                resize_from=resize_from, resize_until=resize_until, resolution=resolution, preset=preset,
                val_size=val_size, seed=seed, strict=strict or None, time_budget_min=time_budget_min,
                workers=workers, threads=threads, device=device, output=str(output) if output else None)
        reporter = _rich_reporter() if err_console.is_terminal and not as_json else Reporter()
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


def eval_cmd(
    model: Annotated[str, typer.Argument(help="model name, or a .safetensors checkpoint")],
    data: Annotated[str, typer.Option(help="cifar10:PATH, cifar100:PATH, folder:PATH or synthetic[:N]")],
    weights: Annotated[str | None, typer.Option("--weights", "-w", help="checkpoint file")] = None,
    batch_size: Annotated[int, typer.Option(help="images per forward pass")] = 100,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda ...")] = "auto",
    strict: Annotated[bool, typer.Option("--strict", help="an unreadable image is an error, not skipped")] = False,
    val_size: Annotated[float | None, typer.Option(help="folder without val/: the images training held out "
                                                   "(default: as the checkpoint records; none: all of train/)")]
    = None,
    seed: Annotated[int | None, typer.Option(help="seed of that held-out split (default: the checkpoint's)")] = None,
    tta: Annotated[str, typer.Option(help="views scored: none, mirror (each image and its mirror) or mirror-shift "
                                          "(also shifted 1 px both ways)")] = "none",
    as_json: Annotated[bool, typer.Option("--json", help="print JSON only")] = False,
) -> None:
    """Top-1, top-5 and loss of a checkpoint, preprocessed as its training's eval path."""
    from ..train import evaluate_checkpoint
    if weights is None:
        if not model.endswith((".safetensors", ".pth", ".pt")):
            fail("give --weights FILE (a checkpoint written by `mobilenets train`)")
        weights, model = model, None
    with _warnings_as_lines():
        res = evaluate_checkpoint(weights, data, model=model, batch_size=batch_size, device=device, strict=strict,
                                  val_size=int(val_size) if val_size and val_size >= 1 else val_size, seed=seed,
                                  tta=tta)
    if as_json:
        typer.echo(json.dumps(res, indent=1))
        return
    table = Table(title=f"{weights} on {data} ({res['split']})")
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
