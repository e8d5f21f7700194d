"""The ``export`` verb: a thin layer over ``mobilenets.deploy.export``.

Exit codes: 0 exported and verified, 1 the export failed verification (nothing written),
2 bad input (including a runtime or converter that is not installed).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from . import console, fail


def _batch(value: str) -> int | str:
    if value == "dynamic":
        return value
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        fail(f"--batch takes a positive integer or 'dynamic', got {value!r}")
    return n


def export_cmd(
    model: Annotated[str, typer.Argument(help="model name (see `mobilenets list`) or a .safetensors checkpoint")],
    format: Annotated[str, typer.Option("--format", "-f", help="onnx, openvino or tflite")] = "onnx",
    weights: Annotated[str | None, typer.Option("--weights", "-w", help="checkpoint file or source tag "
                                                "(default: the model's published weights; 'random': none)")] = None,
    int8: Annotated[bool, typer.Option("--int8", help="post-training int8 quantization (needs --calib)")] = False,
    calib: Annotated[str | None, typer.Option("--calib", help="calibration images: a folder (class folders or "
                                              "plain images) or a dataset spec as in `train --data`")] = None,
    calib_size: Annotated[int, typer.Option(help="how many calibration images")] = 300,
    precision: Annotated[str | None, typer.Option(help="fp32, bf16 (openvino) or int8")] = None,
    resolution: Annotated[int | None, typer.Option(help="input resolution (default: the model's)")] = None,
    batch: Annotated[str, typer.Option(help="batch size or 'dynamic'")] = "1",
    nhwc: Annotated[bool, typer.Option("--nhwc", help="N x H x W x C input (TFLite's native layout)")] = False,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="output file or directory")] = None,
    report: Annotated[bool, typer.Option("--report", help="int8: size, accuracy and latency vs fp32")] = False,
    min_agreement: Annotated[float, typer.Option(help="int8/bf16: least top-1 agreement with PyTorch")] = 0.5,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="skip the runtime check (not advised)")] = False,
    qat_epochs: Annotated[int, typer.Option(help="int8: epochs of quantization-aware fine-tuning on --calib "
                                            "(labelled: a dataset spec or class folders); 0 = post-training "
                                            "quantization")] = 0,
    qat_lr: Annotated[float | None, typer.Option(help="QAT learning rate (SGD, cosine; default 1e-3)")] = None,
    qat_images: Annotated[int | None, typer.Option(help="QAT: at most this many training images per epoch "
                                                   "(default 10000)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Export to ONNX, OpenVINO IR or TFLite, verified in its runtime against PyTorch."""
    from ..deploy.export import VerificationError, export
    from .weights import _model

    net = _random(model) if weights in ("random", "none") else _model(model, weights)
    try:
        result = export(net, format, output, int8=int8, calib=calib, resolution=resolution, batch=_batch(batch),
                        precision=precision, nhwc=nhwc, verify=not no_verify, calib_size=calib_size,
                        min_agreement=min_agreement, report=report, qat_epochs=qat_epochs, qat_lr=qat_lr,
                        qat_max_images=-1 if qat_images is None else qat_images)
    except VerificationError as exc:
        fail(f"verification failed: {exc}", code=1)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=1, default=str))
        return
    v = result.verification
    table = Table(title=f"exported {result.path.name}", show_header=False)
    table.add_row("file", str(result.path))
    table.add_row("sidecar", str(result.sidecar))
    table.add_row("size", f"{result.size_bytes / 2**20:.2f} MiB")
    if v:
        table.add_row("verified on", f"{v['backend']}, {v['images']} {v['inputs']}")
        table.add_row("max |logit diff|", f"{v['max_abs_diff']:.2e}" + (f" (<= {v['tolerance']:g})"
                                                                        if "tolerance" in v else ""))
        table.add_row("top-1 agreement", f"{v['top1_agreement']:.1%}")
        if "top1_export" in v:
            table.add_row("top-1 torch / export", f"{v['top1_torch']:.1%} / {v['top1_export']:.1%}")
    else:
        table.add_row("verified", "no (--no-verify)")
    q = result.qat
    if q:
        last = q["history"][-1] if q.get("history") else {}
        table.add_row("QAT", f"{q['epochs']} epoch(s), {q['steps']} steps on {q['data'].get('images')} images, "
                      f"lr {q['lr']:g}" + (f", last train loss {last['train_loss']:.3f}" if last else ""))
    r = result.report
    if r:
        sizes = r["size_bytes"]
        table.add_row("size fp32 / int8", f"{sizes['fp32'] / 2**20:.2f} / {sizes['int8'] / 2**20:.2f} MiB")
        if "top1" in r:
            table.add_row("top-1 fp32 / int8", f"{r['top1']['fp32']:.1%} / {r['top1']['int8']:.1%}")
        lat = r["latency_ms"]
        table.add_row("latency fp32 / int8", f"{lat['fp32']['median_ms']:.2f} / {lat['int8']['median_ms']:.2f} ms "
                      f"({r['speedup']:.2f}x, {r['threads']} thread, batch 1)")
    console.print(table)


def _random(model: str):
    from ..weights import create_model
    if Path(model).suffix == ".safetensors":
        fail("--weights random takes a model name, not a checkpoint")
    return create_model(model)


def register(app: typer.Typer) -> None:
    app.command("export")(export_cmd)
