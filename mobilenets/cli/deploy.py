"""The ``export`` verb: a thin layer over ``mobilenets.deploy.export``.

Exit codes: 0 exported and verified, 1 the export failed verification (nothing written),
2 bad input (including a runtime or converter that is not installed). Progress goes to stderr:
a status line on a terminal, one line per finished step otherwise; the result (a table, or JSON
with ``--json``) to stdout.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ..core.errors import UsageError
from ..deploy.calibration import DEFAULT_CALIB_SIZE
from ..deploy.common import Steps
from ..deploy.export import FORMATS, VerificationError, export
from ..deploy.triton import export_triton
from ..weights import create_model
from . import options
from .common import console, fail
from .options import TASKS, task_builder


def parse_batch(value: str) -> int | str:
    """``--batch-size``: a positive integer or "dynamic"."""
    if value == "dynamic":
        return value
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise UsageError(f"--batch-size takes a positive integer or 'dynamic', got {value!r}")
    return n


class Progress(Steps):
    """Export steps on stderr: on a terminal, a spinner naming the running step; every finished
    step as one line (plain text when stderr is not a terminal)."""

    def __init__(self, stream=None):
        self._own = None
        if stream is None and sys.stderr.isatty():
            # a copy of the terminal's descriptor: converters run with fd 2 silenced, the spinner keeps going
            stream = self._own = os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1)
        self.console = Console(file=stream or sys.stderr, highlight=False)
        self.status = None

    def start(self, name: str) -> None:
        if not self.console.is_terminal:
            return
        if self.status is None:
            self.status = self.console.status(f"{name}...")
            self.status.start()
        else:
            self.status.update(f"{name}...")

    def done(self, name: str, seconds: float) -> None:
        self.console.print(f"{name}: done in {seconds:.1f}s")

    def log(self, message: str) -> None:
        self.console.print(message)

    def close(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None
        if self._own is not None:
            self._own.close()
            self._own = None


def export_cmd(
    model: Annotated[str, typer.Argument(help="model name (see `mobilenets list`), a checkpoint "
                                         "(.safetensors, .pth) or a training run directory")],
    format: Annotated[str, typer.Option("--format", "-f", help=", ".join(FORMATS) + ", or triton (a Triton model "
                                        "repository: -o names the repository folder)")] = "onnx",
    weights: Annotated[str | None, typer.Option("--weights", "-w", help="checkpoint file or source tag "
                                                "(default: the model's published weights; 'random': none)")] = None,
    int8: Annotated[bool, typer.Option("--int8", help="post-training int8 quantization (needs --calib)")] = False,
    calib: Annotated[str | None, typer.Option("--calib", help="calibration images: a folder (class folders or "
                                              "plain images) or a dataset spec as in `train --data`")] = None,
    calib_size: Annotated[int, typer.Option(help="how many calibration images (at least 1)")] = DEFAULT_CALIB_SIZE,
    precision: Annotated[str | None, typer.Option(help="fp32, bf16 (openvino), fp16 (coreml) or int8")] = None,
    resolution: Annotated[int | None, typer.Option(help="input resolution (default: the model's)")] = None,
    batch_size: Annotated[str, typer.Option("--batch-size", "-b", help="batch size of the file, or 'dynamic'")] = "1",
    batch_alias: Annotated[str | None, typer.Option("--batch", hidden=True)] = None,
    nhwc: Annotated[bool, typer.Option("--nhwc", help="N x H x W x C input (TFLite's native layout)")] = False,
    output: options.Output = None,
    report: Annotated[bool, typer.Option("--report", help="int8: size, accuracy and latency vs fp32")] = False,
    min_agreement: Annotated[float, typer.Option(help="int8/bf16: least top-1 agreement with PyTorch, "
                                                 "in [0, 1]")] = 0.5,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="skip the runtime check (not advised)")] = False,
    qat_epochs: Annotated[int, typer.Option(help="int8: epochs of quantization-aware fine-tuning "
                                            "(train --qat) on --calib, a labelled dataset spec; 0 = post-training "
                                            "quantization")] = 0,
    qat_lr: Annotated[float | None, typer.Option(help="QAT learning rate (SGD, cosine; default 1e-3)")] = None,
    qat_images: Annotated[int | None, typer.Option(help="QAT: at most this many training images per epoch "
                                                   "(default 10000)")] = None,
    max_drop: Annotated[float | None, typer.Option(help="int8 with accuracy control: keep the fewest layers in "
                                                   "float so top-1 on the held-out images drops by at most this "
                                                   "many points")] = None,
    int8_format: Annotated[str, typer.Option(help="ONNX Runtime int8 form: qdq or qoperator")] = "qdq",
    val: Annotated[str | None, typer.Option(help="held-out images for every accuracy figure (--report, --max-drop): "
                                            "a dataset spec or class folders [default: the held-out split of a "
                                            "--calib spec]", show_default=False)] = None,
    val_images: Annotated[int | None, typer.Option(help="at most this many held-out images [default: all]",
                                                   show_default=False)] = None,
    features: Annotated[bool, typer.Option("--features", help="the backbone (features_only): one output per "
                                           "feature map")] = False,
    out_indices: Annotated[str | None, typer.Option(help="--features: which maps, e.g. 1,2,4 [default: all]",
                                                    show_default=False)] = None,
    output_stride: Annotated[int | None, typer.Option(help="--features/--task: 16 or 8 turn the last strides into "
                                                      "dilation", show_default=False)] = None,
    task: Annotated[str | None, typer.Option(help=f"a detector or segmenter on this backbone: {', '.join(TASKS)} "
                                             "(--weights: the backbone's)", show_default=False)] = None,
    num_classes: Annotated[int | None, typer.Option(help="--task: classes [default: 91 detection, 21 "
                                                    "segmentation]", show_default=False)] = None,
    triton_backend: Annotated[str, typer.Option(help="--format triton: the Triton backend, onnxruntime or "
                                                "openvino")] = "onnxruntime",
    triton_name: Annotated[str | None, typer.Option(help="--format triton: the model's name in the repository "
                                                    "[default: <model>-w<width>-r<resolution>]",
                                                    show_default=False)] = None,
    triton_max_batch: Annotated[int, typer.Option(min=1, help="--format triton: max_batch_size")] = 32,
    triton_delay_us: Annotated[int, typer.Option(min=0, help="--format triton: dynamic batching's "
                                                 "max_queue_delay_microseconds")] = 2000,
    as_json: options.Json = False,
) -> None:
    """Export for a runtime (ONNX Runtime, OpenVINO, LiteRT, ExecuTorch, ncnn, MNN, Core ML), verified in it
    against PyTorch before it is kept (-o: a file or a folder), or as a Triton model repository."""
    if format == "triton":
        not_here = [flag for flag, given in (("--nhwc", nhwc), ("--report", report), ("--qat-epochs", qat_epochs),
                                             ("--max-drop", max_drop is not None), ("--val", val is not None),
                                             ("--val-images", val_images is not None),
                                             ("--int8-format", int8_format != "qdq"),
                                             ("--batch-size", (batch_alias or batch_size) != "1"),
                                             ("--features", features), ("--task", task is not None),
                                             ("--out-indices", out_indices is not None),
                                             ("--output-stride", output_stride is not None),
                                             ("--num-classes", num_classes is not None)) if given]
        if not_here:
            raise UsageError(f"--format triton writes a classifier as an NCHW file with a dynamic batch "
                             f"(max_batch_size: --triton-max-batch); {', '.join(not_here)} do not apply")
        result = _with_progress(lambda progress: export_triton(
            model, output or ".", backend=triton_backend, name=triton_name, max_batch=triton_max_batch,
            max_queue_delay_us=triton_delay_us, weights=weights, resolution=resolution, precision=precision,
            int8=int8, calib=calib, calib_size=calib_size, min_agreement=min_agreement, verify=not no_verify,
            steps=progress))
        if as_json:
            typer.echo(json.dumps(result.to_dict(), indent=1, default=str))
            return
        table = result_table(result.export)
        table.title = f"Triton model {result.name} in {result.repository}"
        table.add_row("config", str(result.model_dir / "config.pbtxt"))
        table.add_row("batching", f"max_batch_size {triton_max_batch}, max_queue_delay_microseconds {triton_delay_us}")
        console.print(table)
        return
    batch = parse_batch(batch_alias if batch_alias is not None else batch_size)
    if features or task or out_indices or output_stride:
        model, weights = _dense_model(model, weights, features, out_indices, output_stride, task, num_classes), None
    elif num_classes is not None:
        raise UsageError("--num-classes sets a --task's classes (a classifier's come with its weights)")
    result = _with_progress(lambda progress: export(
        model, format, output, weights=weights, int8=int8, calib=calib, resolution=resolution, batch=batch,
        precision=precision, nhwc=nhwc, verify=not no_verify, calib_size=calib_size, min_agreement=min_agreement,
        report=report, qat_epochs=qat_epochs, qat_lr=qat_lr, qat_max_images=-1 if qat_images is None else qat_images,
        max_drop=max_drop, int8_format=int8_format, val=val, val_images=val_images, steps=progress))
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=1, default=str))
        return
    console.print(result_table(result))


def _with_progress(run):
    """``run(progress)`` with the export's steps shown; a failed verification is one line and exit code 1."""
    progress = Progress()
    try:
        return run(progress)
    except VerificationError as exc:
        progress.close()
        fail(f"verification failed: {exc}", code=1)
    finally:
        progress.close()


def _dense_model(name: str, weights: str | None, features: bool, out_indices: str | None, output_stride: int | None,
                 task: str | None, num_classes: int | None):
    """The backbone (``--features``) or detector/segmenter (``--task``) on ``name`` with ``--weights``
    (default: the published ones, as for a classifier; 'random': none) in its backbone."""
    if features == bool(task):
        raise UsageError("--out-indices and --output-stride go with --features or --task (one of them)")
    if out_indices and not features:
        raise UsageError("--out-indices chooses a backbone's maps: add --features")
    if os.path.exists(name):
        raise UsageError(f"--features and --task take a model name ({name} is a file): give the checkpoint "
                         f"as --weights")
    pretrained = True if weights is None else (False if weights == "random" else weights)
    stride = {} if output_stride is None else {"output_stride": output_stride}
    if features:
        try:
            chosen = None if out_indices is None else tuple(int(i) for i in out_indices.split(","))
        except ValueError:
            raise UsageError(f"--out-indices takes whole numbers separated by commas, got {out_indices!r}") from None
        return create_model(name, pretrained=pretrained, features_only=True, out_indices=chosen, **stride)
    classes = {} if num_classes is None else {"num_classes": num_classes}
    return task_builder(task)(name, pretrained_backbone=pretrained, **classes, **stride)


def result_table(result) -> Table:
    """The export's file, verification, QAT and int8 report as a two-column table."""
    v = result.verification
    table = Table(title=f"exported {result.path.name}", show_header=False)
    table.add_row("file", str(result.path))
    table.add_row("sidecar", str(result.sidecar))
    table.add_row("size", f"{result.size_bytes / 2**20:.2f} MiB")
    if v and not v.get("ran", True):
        table.add_row("checked, not run", v["why"])
        outs = ", ".join(f"{o['name']} {o['shape']}" for o in v.get("outputs") or [v["output"]])
        table.add_row("interface", f"{v['input']['name']} {v['input']['shape']} -> {outs}")
        table.add_row("operations", f"{v['ops']} ({v['precision']}" + (", int8 weights)" if v.get("int8") else ")"))
    elif v and "detections" in v:  # a detector: its detections paired with PyTorch's
        table.add_row("verified on", f"{v['backend']}, {v['images']} {v['inputs']}")
        table.add_row("detections", f"{', '.join(map(str, v['detections']))} per image, all paired: boxes "
                      f"within {v['max_box_diff']:.1e} px (<= {v['box_tolerance']:g}), scores within "
                      f"{v['max_score_diff']:.1e}")
    elif v and "outputs" in v:  # a backbone's or segmenter's maps
        table.add_row("verified on", f"{v['backend']}, {v['images']} {v['inputs']}")
        for name, o in v["outputs"].items():
            table.add_row(f"max |{name} diff|", f"{o['max_abs_diff']:.2e} (<= {v['tolerance']:g} x scale "
                                                f"{o['scale']:.3g})")
    elif v:
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
        if "learned" in q:
            table.add_row("QAT", f"the checkpoint's learned ranges ({q['learned'].get('backend')} recipe)")
        else:
            table.add_row("QAT", f"train --qat: {q['epochs']} epoch(s) on {q['data'].get('images')} images, "
                          f"lr {q['lr']:g}" + (f", last train loss {last['train_loss']:.3f}" if last else "")
                          + (f", held-out top-1 {last['val_top1']:.2f}% (fake int8)" if "val_top1" in last else ""))
    c = result.control
    if c:
        table.add_row("accuracy control", f"{c['method']}: top-1 drop <= {c['max_drop']:g} points on "
                      f"{c['val_images']} held-out images (fp32 {c['fp32_top1']:.2f}%)")
        for i, t in enumerate(c["trials"]):
            mark = " <- chosen" if i == c.get("chosen") else ""
            table.add_row(f"  {t['n_float']} layer(s) in float", f"top-1 {t['top1']:.2f}% (drop {t['drop']:+.2f}), "
                          f"{t['size_bytes'] / 2**20:.2f} MiB, {t['latency_ms']:.2f} ms{mark}")
    r = result.report
    if r:
        sizes = r["size_bytes"]
        table.add_row("size fp32 / int8", f"{sizes['fp32'] / 2**20:.2f} / {sizes['int8'] / 2**20:.2f} MiB")
        if "top1" in r:
            table.add_row("top-1 fp32 / int8", f"{r['top1']['fp32']:.2%} / {r['top1']['int8']:.2%}")
        if "validation" in r:
            cal, val = r["calibration"], r["validation"]
            table.add_row("measured on", f"{val['images']} images of {val['source']} ({val['part']}); calibrated "
                          f"on {cal['images']} of {cal['source']} ({cal['part']})")
        lat = r["latency_ms"]
        table.add_row("latency fp32 / int8", f"{lat['fp32']['median_ms']:.2f} / {lat['int8']['median_ms']:.2f} ms "
                      f"({r['speedup']:.2f}x, {r['threads']} thread, batch 1)")
    return table


def register(app: typer.Typer) -> None:
    app.command("export")(export_cmd)
