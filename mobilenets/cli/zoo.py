"""Verbs that describe the zoo: ``list`` and ``profile``."""
from __future__ import annotations

import json

import typer
from rich.table import Table

from ..core.errors import UsageError
from ..measure.profile import DETECTORS
from ..measure.profile import profile as profile_model
from ..models import VARIANTS, get_variant, match_models
from ..weights import create_model
from .common import console
from .options import TASKS, task_builder


def _m(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def list_cmd(pattern: str = typer.Argument("*", help="shell pattern or substring, e.g. 'v3*' or 'mobilenext'"),
             as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table")) -> None:
    """Every variant with its published MACs, params and ImageNet top-1."""
    names = match_models(pattern)
    rows = [VARIANTS[n] for n in names]
    if as_json:
        print(json.dumps([v.__dict__ for v in rows], indent=1))
        return
    table = Table(title=f"{len(rows)} MobileNet variants (published figures, ImageNet)")
    for col in ("name", "width", "res", "MACs M", "params M", "top-1", "source"):
        table.add_column(col, justify="left" if col in ("name", "source") else "right", no_wrap=col == "name")
    for v in rows:
        table.add_row(v.name, f"{v.width:g}", str(v.resolution), _m(v.macs_m, 0), _m(v.params_m, 2),
                      _m(v.top1), v.source)
    console.print(table)


def profile_cmd(
    name: str = typer.Argument(..., help="model name, see `mobilenets list`"),
    width: float = typer.Option(None, help="width multiplier (base names only)"),
    resolution: int = typer.Option(None, help="input resolution (default: the variant's)"),
    cifar_stem: bool = typer.Option(False, "--cifar-stem", help="stride 1 in the first layers (32x32 inputs)"),
    num_classes: int = typer.Option(None, help="classifier outputs [default: 1000; a --task's: 91 for detection, "
                                               "21 for segmentation]", show_default=False),
    identity_mult: float = typer.Option(1.0, help="MobileNeXt identity tensor multiplier"),
    features: bool = typer.Option(False, "--features", help="the backbone only (features_only: no classifier)"),
    output_stride: int = typer.Option(32, help="backbone output stride: 16 or 8 turn the last strides into dilation"),
    task: str = typer.Option(None, help=f"a detector or segmenter on this backbone: {', '.join(TASKS)}",
                             show_default=False),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of tables"),
) -> None:
    """Per-layer MACs, params and activation memory of one model, by stage and in total (a --task: by part,
    backbone and heads apart)."""
    variant = get_variant(name)
    kwargs = dict(cifar_stem=cifar_stem, output_stride=output_stride)
    if identity_mult != 1.0:
        kwargs["identity_mult"] = identity_mult
    if task is not None:
        _profile_task(task, name, width, resolution, num_classes, kwargs, as_json)
        return
    model = create_model(name, width=width, resolution=resolution, features_only=features,
                         num_classes=1000 if num_classes is None else num_classes, **kwargs)
    prof = profile_model(model, name=name)
    if as_json:
        print(json.dumps(prof.to_dict(), indent=1))
        return
    num_classes = model.config.num_classes
    what = " backbone" if features else ""
    table = Table(title=f"{name}{what} width {model.config.width:g} at {prof.resolution}x{prof.resolution}")
    for col in ("#", "layer", "type", "output", "MACs", "params", "act. memory"):
        table.add_column(col, justify="left" if col in ("layer", "type", "output") else "right")
    for i, lay in enumerate(prof.layers):
        table.add_row(str(i), lay.name, lay.type, "x".join(map(str, lay.output_shape[1:])), f"{lay.macs:,}",
                      f"{lay.params:,}", f"{lay.memory / 1024:,.0f} KiB")
    console.print(table)
    console.print(_parts_table("stages (feature maps as timm's features_only gives them)", prof.stages))
    whole = width is None and num_classes == 1000 and not features
    totals = Table(show_header=False, title="totals")
    totals.add_row("MACs", f"{prof.macs / 1e6:.1f} M", f"published {_m(variant.macs_m, 0)} M" if variant.macs_m
                   and whole and resolution in (None, variant.resolution) and output_stride == 32 else "")
    totals.add_row("params", f"{prof.params / 1e6:.3f} M", f"published {_m(variant.params_m, 2)} M"
                   if variant.params_m and whole else "")
    totals.add_row("peak activation memory", f"{prof.peak_memory / 2**20:.2f} MiB", "fp32, batch 1")
    totals.add_row("peak while a shortcut is held", f"{prof.shortcut_peak_memory / 2**20:.2f} MiB", "")
    console.print(totals)


def _profile_task(task: str, backbone: str, width, resolution, num_classes, options: dict, as_json: bool) -> None:
    """``profile --task``: the detector or segmenter on ``backbone``, by part."""
    build = task_builder(task)
    if resolution is not None:
        raise UsageError(f"{task} sets its own input size: --resolution does not apply")
    if options.pop("cifar_stem"):
        raise UsageError("--cifar-stem is for 32x32 classifiers, not a --task")
    if options["output_stride"] == 32:
        del options["output_stride"]  # the task's own (segmentation: 16)
    model = build(backbone, width, **({} if num_classes is None else {"num_classes": num_classes}), **options)
    prof = profile_model(model, name=f"{task} on {backbone}")
    if as_json:
        print(json.dumps(prof.to_dict(), indent=1))
        return
    console.print(_parts_table(f"{prof.model} (width {model.backbone_config.width:g}) at "
                               f"{prof.resolution}x{prof.resolution}", prof.parts))
    totals = Table(show_header=False, title="totals")
    totals.add_row("MACs", f"{prof.macs / 1e6:.1f} M", "one seeded random image" if task in DETECTORS else "")
    totals.add_row("params", f"{prof.params / 1e6:.3f} M", "")
    totals.add_row("peak activation memory", f"{prof.peak_memory / 2**20:.2f} MiB", "fp32, batch 1")
    console.print(totals)


def _parts_table(title: str, parts) -> Table:
    """Stages of a backbone (with their output maps) or parts of a detector/segmenter: MACs, params, memory."""
    maps = any(p.channels for p in parts)
    cols = ("part", *(("channels", "stride", "output") if maps else ()), "MACs M", "params M", "peak act. memory")
    table = Table(title=title)
    for col in cols:
        table.add_column(col, justify="left" if col in ("part", "output") else "right")
    for p in parts:
        shape = "x".join(map(str, p.output_shape[1:])) if p.output_shape else "-"
        where = (str(p.channels or "-"), str(p.reduction or "-"), shape) if maps else ()
        table.add_row(p.name, *where, f"{p.macs / 1e6:.1f}", f"{p.params / 1e6:.3f}", f"{p.memory / 2**20:.2f} MiB")
    return table


def register(app: typer.Typer) -> None:
    app.command("list")(list_cmd)
    app.command("profile")(profile_cmd)
