"""Verbs about weights: ``convert`` (a downloaded checkpoint -> ours) and ``predict``.

Thin layers over ``mobilenets.weights.convert_file`` and ``mobilenets.predict.predict``.
Exit codes of ``predict``: 0 every image read, 1 some skipped (named on stderr), 2 bad input.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..predict import PredictResult, predict
from ..weights import convert_file
from . import options
from .common import console, err_console


def convert_cmd(
    src: Annotated[Path, typer.Argument(help="checkpoint you downloaded (.pth, .safetensors, Keras .h5)")],
    from_: Annotated[str, typer.Option("--from", help="torchvision, timm or keras, or a source tag "
                                       "such as timm.tf_in1k (see the weight registry)")],
    model: Annotated[str, typer.Option("--model", help="our model name, e.g. mobilenet_v3_large")],
    output: Annotated[Path, typer.Option("--output", "-o", "--to", help="output .safetensors file "
                                         "(--to: the old spelling)")],
    width: Annotated[float | None, typer.Option(help="width multiplier (base names only)")] = None,
) -> None:
    """Convert a torchvision, timm or Keras checkpoint into a mobilenets .safetensors file."""
    out = convert_file(src, from_, model, output, width=width)
    console.print(f"wrote {out}", highlight=False)


def predict_cmd(
    model: Annotated[str, typer.Argument(help="model name (see `mobilenets list`), a checkpoint, a training run "
                                         "folder or an exported file (.onnx, .xml, .tflite, .pte, .param, .mnn)")],
    images: Annotated[list[Path], typer.Argument(help="image files and folders (searched recursively)")],
    weights: Annotated[str | None, typer.Option("--weights", "-w", help="checkpoint file or source tag "
                                                "(default: the model's default published weights)")] = None,
    top: Annotated[int, typer.Option(min=1, help="how many classes per image")] = 5,
    batch_size: options.BatchSize = 32,
    device: options.Device = "auto",
    backend: Annotated[str | None, typer.Option(help="run on this runtime: torch, compile, cudagraphs (--device "
                                                "cuda), onnxruntime, tensorrt, openvino, litert, executorch, ncnn, "
                                                "mnn (a model is converted for it first) [default: torch for "
                                                "models, the file's own runtime for exports]",
                                                show_default=False)] = None,
    as_json: options.Json = False,
) -> None:
    """Top-k classes for images, preprocessed as the model says."""
    result = predict(model, images, top=top, batch_size=batch_size, weights=weights, device=device,
                     backend=backend, progress=not as_json and err_console.is_terminal)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=1))
    else:
        _print(result)
        for s in result.skipped:
            err_console.print(f"[yellow]skipped[/] {s.path}: {s.reason}", highlight=False, soft_wrap=True)
    if result.skipped:
        raise typer.Exit(1)


def _print(result: PredictResult) -> None:
    """One row per class; image paths relative to the folder they share (named in the title)."""
    paths = [p.path for p in result.predictions]
    root = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths]) if paths else ""
    table = Table(title=f"{result.model}: {len(result.predictions)} images"
                  + (f", {len(result.skipped)} skipped" if result.skipped else "") + (f" in {root}" if root else ""))
    for col in ("image", "#", "class", "index", "prob"):
        table.add_column(col, justify="right" if col in ("#", "index", "prob") else "left", overflow="fold")
    for p in result.predictions:
        shown = os.path.relpath(os.path.abspath(p.path), root) if root else p.path
        for rank, t in enumerate(p.top, 1):
            table.add_row(shown if rank == 1 else "", str(rank), t.label, str(t.index), f"{t.prob:.3f}",
                          end_section=rank == len(p.top))
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("convert")(convert_cmd)
    app.command("predict")(predict_cmd)
