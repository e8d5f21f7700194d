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

from ..core.errors import UsageError
from . import console, err_console, fail


def convert_cmd(
    src: Annotated[Path, typer.Argument(help="checkpoint you downloaded (.pth, .safetensors, Keras .h5)")],
    from_: Annotated[str, typer.Option("--from", help="torchvision, timm or keras, or a source tag "
                                       "such as timm.tf_in1k (see the weight registry)")],
    model: Annotated[str, typer.Option("--model", help="our model name, e.g. mobilenet_v3_large")],
    to: Annotated[Path, typer.Option("--to", help="output .safetensors file")],
    width: Annotated[float | None, typer.Option(help="width multiplier (base names only)")] = None,
) -> None:
    """Convert a torchvision, timm or Keras checkpoint into a mobilenets .safetensors file."""
    from ..weights import convert_file
    try:
        out = convert_file(src, from_, model, to, width=width)
    except UsageError as exc:
        fail(str(exc))
    console.print(f"wrote {out}", highlight=False)


def predict_cmd(
    model: Annotated[str, typer.Argument(help="model name (see `mobilenets list`), a .safetensors checkpoint or "
                                         "an exported .onnx/.xml/.tflite file")],
    images: Annotated[list[Path], typer.Argument(help="image files and directories (searched recursively)")],
    weights: Annotated[str | None, typer.Option("--weights", "-w", help="checkpoint file or source tag "
                                                "(default: the model's default published weights)")] = None,
    top: Annotated[int, typer.Option(help="how many classes per image")] = 5,
    batch_size: Annotated[int, typer.Option(help="images per forward pass")] = 32,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, mps ...")] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="print JSON only")] = False,
) -> None:
    """Top-k classes for images, preprocessed as the checkpoint says."""
    from ..predict import predict
    try:
        net = _model(model, weights)
        result = predict(net, images, top=top, batch_size=batch_size, device=device,
                         progress=not as_json and err_console.is_terminal)
    except UsageError as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=1))
    else:
        _print(result)
        for s in result.skipped:
            err_console.print(f"[yellow]skipped[/] {s.path}: {s.reason}", highlight=False, soft_wrap=True)
    if result.skipped:
        raise typer.Exit(1)


def _model(model: str, weights: str | None):
    """MODEL names the architecture; our checkpoints carry their own config, so a family name
    accepts any width stored in the file, a full variant name must match it."""
    from ..models import get_variant
    from ..predict import is_export
    from ..weights import create_model, load_checkpoint, read_weights
    from ..weights.io import is_ours
    if is_export(weights or model):  # an exported file runs in its own runtime
        return weights or model
    if weights is None and Path(model).suffix == ".safetensors":
        return load_checkpoint(model)[0]
    if weights and Path(weights).suffix == ".safetensors" and Path(weights).is_file() \
            and is_ours(read_weights(weights)[1]):
        net, meta = load_checkpoint(weights)
        v, got = get_variant(model), net.config
        if got.family != v.family or (model != v.family and got.width != v.width):
            raise UsageError(f"{weights} holds {meta.variant or got.family} (family {got.family}, width {got.width}), "
                             f"not {model}")
        return net
    return create_model(model, pretrained=weights or True)


def _print(result) -> None:
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
