"""Export a MobileNet (or a backbone, segmenter or detector) for every runtime, verified in its
runtime before it is kept.

The steps of ``export``: check the request (before any slow work), resolve the model
(``weights.resolve_model``), build the inference graph (``graph.deploy_module``: BN folded,
dropout gone, global pools, head as 1x1 convs, native hard-swish), convert it (``convert``),
quantize it when asked (``quantize``, or ``qat`` for quantization-aware fine-tuning), load the
result in its runtime and compare with the PyTorch model on the same inputs, then move the
file(s) and a JSON sidecar into place. Everything is written into a staging folder beside the
output (``core.files.staging_dir``) and published at the end with the umask's permissions, so a
failed conversion or verification leaves nothing behind under the real name, a reader never
sees half a file, and the folder a killed export leaves is cleaned by the next one.

Dense-prediction models (``tasks``: a ``FeatureNet`` backbone, torchvision's LR-ASPP / DeepLabV3
segmenters and SSD / Faster R-CNN detectors, ours included) take the same steps in fp32: named
outputs (``feature0``..., ``out``, ``boxes`` / ``scores`` / ``labels``), each verified, and a
sidecar that records the task and its outputs.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from torch import nn

from ..core.errors import UsageError
from ..core.files import check_parent, publish, staging_dir
from ..models.meta import CheckpointMeta
from ..models.network import MobileNet, unwrap
from ..train.report import Reporter
from ..weights.resolve import resolve_model
from . import accuracy, qat
from .calibration import (
    DEFAULT_CALIB_SIZE,
    ImageSet,
    check_disjoint,
    is_spec,
    load_held_out,
    load_images,
    random_inputs,
    split_of,
)
from .common import (
    DEFAULT_OPSET,
    MIN_OPSET,
    NO_STEPS,
    SIDECAR_FORMAT,
    ExportError,
    Steps,
    VerificationError,
    export_meta,
    first_line,
    sidecar_of,
    write_sidecar,
)
from .graph import deploy_module
from .quantize import compare, file_size, quantize_file
from .runtimes import FORMATS, RUNTIMES, Runtime, Session, by_format, open_session
from .tasks import CLASSIFICATION, Task, structured_images, task_of

INT8_FORMATS = ("qdq", "qoperator")

__all__ = ["DEFAULT_OPSET", "FORMATS", "FP32_TOLERANCE", "INT8_FORMATS", "SIDECAR_FORMAT",
           "ExportError", "ExportResult", "VerificationError", "default_name", "export", "qat_finetune",
           "verify_export"]

FP32_TOLERANCE = 1e-4
# A detector's boxes, fp32: 1e-4 of the image side, at least 1e-2 px. The box regression is scaled by
# anchors of up to the image's size (and exponentiated for width and height), so fp32 rounding moves
# a large box's edges by ~1e-4 of the image: 0.015 px at 320 px is measured between ONNX Runtime and PyTorch.
BOX_TOLERANCE, BOX_RTOL = 1e-2, 1e-4
DETECTION_IMAGES = 2  # structured test images a detector is verified on


@dataclass
class ExportResult:
    path: Path
    sidecar: Path
    format: str
    precision: str
    backend: str
    files: list[Path] = field(default_factory=list)
    verification: dict = field(default_factory=dict)
    report: dict = field(default_factory=dict)
    qat: dict = field(default_factory=dict)
    control: dict = field(default_factory=dict)

    @property
    def size_bytes(self) -> int:
        """Bytes on disk of the exported file(s), a package folder's content included."""
        return file_size(self.path) if self.path.exists() else 0

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(path=str(self.path), sidecar=str(self.sidecar), files=[str(f) for f in self.files],
                 size_bytes=self.size_bytes)
        return d


def default_name(model, fmt: str, precision: str, resolution: int) -> str:
    """``mobilenet_v3_large-w1.0-r224-onnx-int8.onnx``: model, width, resolution, format, precision
    (``tasks.Task.stem``: ``...-features`` for a backbone, ``lraspp-...`` for a segmenter...)."""
    return f"{task_of(model).stem()}-r{resolution}-{fmt}-{precision}{by_format(fmt).suffix}"


def export(model, fmt: str, output: str | os.PathLike | None = None, *, int8: bool = False,
           calib=None, resolution: int | None = None, batch: int | str = 1, precision: str | None = None,
           nhwc: bool = False, verify: bool = True, weights: str | None = None, opset: int = DEFAULT_OPSET,
           calib_size: int | None = DEFAULT_CALIB_SIZE, min_agreement: float = 0.5, report: bool = False,
           verbose: bool = False, qat_epochs: int = 0, qat_lr: float | None = None,
           qat_batch_size: int | None = None, qat_max_images: int | None = -1, qat_data=None,
           val=None, val_images: int | None = None, max_drop: float | None = None, int8_format: str = "qdq",
           steps: Steps | None = None) -> ExportResult:
    """Export ``model`` as ``fmt``: whatever ``weights.resolve_model`` accepts (a MobileNet, a model
    name with optional ``weights`` (default: its published weights; "random": none), a checkpoint,
    a training run directory).

    ``int8``: post-training static quantization with ``calib`` (a directory of images, a dataset
    spec, an N x C x H x W array), at most ``calib_size`` images; of a dataset spec, only its
    training split (split as the model's training run recorded, ``calibration.split_of``).
    ``int8_format``: ONNX Runtime's "qdq" (default) or "qoperator" (QLinearConv...) form.
    ``max_drop``: accuracy-controlled int8 (``deploy.accuracy``): the fewest layers kept in float
    so that top-1 on the held-out images falls by at most this many points. ``val``: the held-out
    images of every accuracy figure (``report``, ``max_drop``; default: the held-out split of a
    ``calib`` spec), at most ``val_images``; it may share no image with the calibration set.
    ``precision``: "fp32" (default),
    "bf16" (OpenVINO: the IR runs with a bf16 inference hint) or "int8" (same as ``int8=True``).
    ``batch``: an int or "dynamic". ``output``: a file, a directory (named by ``default_name``) or
    None (the current directory).
    ``verify``: load the file in its runtime and compare with PyTorch (fp32: max |diff| <= 1e-4 on
    the logits; int8/bf16: top-1 agreement >= ``min_agreement``, in [0, 1]); a failure raises
    ``VerificationError`` and nothing is written. ``report``: for int8, also measure fp32 vs int8
    size, accuracy (on the held-out images) and latency on the same runtime.
    ``qat_epochs``: 0 (default) is post-training quantization; N > 0 (int8: ONNX, OpenVINO, TFLite) is
    ``train --qat`` of the model for N epochs (``deploy.qat.finetune``: the int8 recipe of ``fmt``, a
    fine-tuning schedule) on ``qat_data`` (a labelled dataset spec; default: ``calib``, which must
    then be one), its held-out split left out, then the int8 file of the ranges it learned;
    ``qat_lr``, ``qat_batch_size``, ``qat_max_images``: its learning rate, batch and training
    images, -1 meaning its default.
    ``steps``: receives the progress (``common.Steps``). Bad requests are a ``UsageError``
    raised before any model is built, data read or file converted.

    ``model`` may also be a dense-prediction module (``tasks``), exported in fp32 with its outputs
    named and each verified: a backbone (``create_model(..., features_only=True)``: ``feature0``...
    in ``feature_info``'s order, to every format), a torchvision LR-ASPP or DeepLabV3 segmenter
    (``out``, N x classes x H x W; the training-only auxiliary head left out; every format, at a
    square ``resolution``, default the model's ``resolution`` attribute or 520) or an SSD / Faster
    R-CNN detector (``boxes``, ``scores``, ``labels`` of one 3 x H x W image in [0, 1], with the
    post-processing; ONNX only, batch 1). The sidecar adds ``task``, ``outputs``, ``output_shapes``
    (and a backbone's ``feature_info``). int8, bf16 and fp16 stay classifiers' (their check is top-1
    agreement).
    """
    precision = _check_request(fmt, int8=int8, precision=precision, calib=calib, batch=batch, opset=opset,
                               calib_size=calib_size, min_agreement=min_agreement, qat_epochs=qat_epochs,
                               qat_lr=qat_lr, qat_batch_size=qat_batch_size, qat_max_images=qat_max_images,
                               max_drop=max_drop, int8_format=int8_format, val_images=val_images)
    task = task_of(model)
    task.check(fmt, precision=precision, nhwc=nhwc, batch=batch)
    _check_output(output, fmt)
    runtime = by_format(fmt)
    backend = runtime.backend
    _require(runtime, precision, qat_epochs)
    steps = steps or NO_STEPS

    qat_spec = qat.check_data(calib if qat_data is None else qat_data) if qat_epochs else None
    net, meta, source = _resolve(model, task, weights)
    task = replace(task_of(net), meta=meta)
    learned = precision == "int8" and getattr(net, "qat_state", None) is not None  # a QAT checkpoint: learned ranges
    if precision == "int8" and calib is None and not learned and runtime.int8_calibrates:
        raise UsageError("int8 needs calibration data: pass calib (--calib DATA), a folder of images or a dataset spec")
    if qat_epochs and nhwc:
        raise UsageError("quantization-aware fine-tuning trains NCHW (train --qat): drop --nhwc")
    if learned and (qat_epochs or max_drop is not None or nhwc):
        raise UsageError(f"{source} is a quantization-aware checkpoint: its int8 export is its trained "
                         f"graph with the ranges it learned (NCHW; no --qat-epochs, --max-drop or --nhwc)")
    res = int(resolution or task.resolution)
    if res < task.min_resolution:
        what = task.config.family if task.kind == "classification" else task.name
        raise UsageError(f"resolution {res} is too small for {what} (at least {task.min_resolution})")
    pre = task.preprocessing(res)
    out = _output_path(output, net, fmt, precision, res)
    chans = task.in_chans

    split = split_of(calib, meta)
    calib_set = _calibration(calib, pre, calib_size, (chans, res, res), steps, split)
    needs_val = precision == "int8" and (report or max_drop is not None)
    val_set = _validation(val, calib, pre, meta, split, val_images, (chans, res, res), steps, needs_val)
    check_disjoint(calib_set, val_set)

    with staging_dir(out.parent) as work:
        deploy = deploy_module(net, nhwc=nhwc)
        fixed = 2 if batch == "dynamic" else int(batch)  # batch 1 would specialise a dynamic dim
        example = task.example(fixed, res, nhwc)
        suffix = runtime.suffix
        fp32_file = work / f"fp32{suffix}"
        # int8 quantized from the torch module (PT2E) and QAT: their fp32 file is only needed for the report.
        if not ((runtime.int8_from == "module" or qat_epochs or learned) and precision == "int8" and not report
                and max_drop is None):
            fp16 = {"precision": "fp16"} if precision == "fp16" else {}  # Core ML's compute precision
            runtime.convert(deploy, example, fp32_file, dynamic=batch == "dynamic", opset=opset, verbose=verbose,
                            steps=steps, outputs=task.outputs, **task.convert_options, **fp16)
        final, qat_info, control = fp32_file, {}, {}
        if learned:
            final = work / f"int8{suffix}"
            with steps("convert the learned quantization to int8"):
                qat.save_learned_int8(net, fmt, final, batch=batch, opset=opset, verbose=verbose)
            qat_info = {"learned": net.checkpoint_meta.extra["qat"]}
        elif precision == "int8" and qat_epochs:
            final = work / f"int8{suffix}"
            # the fine-tuned network is verified below as what it computes: its fake-quantized graph
            net, qat_info = _qat_int8(net, qat_spec, work, final, fmt, steps, epochs=qat_epochs, lr=qat_lr,
                                      batch_size=qat_batch_size, max_images=qat_max_images, resolution=res,
                                      batch=batch, opset=opset, verbose=verbose)
        elif precision == "int8" and max_drop is not None:
            final = work / f"int8{suffix}"
            control = accuracy.quantize_with_control(fmt, fp32_file, final, calib_set.images, val_set, max_drop,
                                                     nhwc=nhwc, module=deploy, example=example,
                                                     int8_format=int8_format, steps=steps)
            control["calibration"], control["validation"] = calib_set.describe(), val_set.describe()
        elif precision == "int8":
            final = work / f"int8{suffix}"
            with steps("calibrate and quantize"):
                images = calib_set.images if calib_set is not None else None  # None: weights-only int8
                quantize_file(fmt, fp32_file, final, images, nhwc=nhwc, module=deploy, example=example,
                              int8_format=int8_format)

        side = export_meta(net, meta=meta, config=task.config, fmt=fmt, backend=backend, precision=precision,
                           resolution=res, batch=batch, nhwc=nhwc, preprocessing=pre)
        side.update(task.sidecar(deploy, example, dynamic=batch == "dynamic"))
        if task.kind == "detection":
            side["input_layout"] = task.input_layout
        if precision == "int8" and fmt == "onnx":
            side["int8_format"] = "qdq" if qat_epochs else int8_format
        # The sidecars go next to the work files too: sessions read the layout, precision and outputs from them.
        if fp32_file.exists():
            write_sidecar(fp32_file, {**side, "precision": "fp32"})
        write_sidecar(final, side)
        verification: dict = {}
        cannot_run = runtime.runs_here() if verify else None  # Core ML on Linux: checked, not run
        if cannot_run:
            with steps("check (this machine cannot run it)"):
                verification = {**_inspected(runtime, final, task), "ran": False, "why": cannot_run}
        elif verify:
            with steps("verify"):
                checked = calib_set if val_set is None else val_set
                reference = qat.learned_model(net) if learned or qat_epochs else net  # QAT: fake-quantized
                verification = verify_export(reference, final, backend, precision, checked, res, min_agreement,
                                             task=task)
        quant_report: dict = {}
        if report and precision == "int8":
            with steps("compare fp32 and int8 on held-out images"):
                quant_report = compare(fp32_file, final, backend, val_set)
            quant_report["calibration"], quant_report["validation"] = calib_set.describe(), val_set.describe()
        side["verification"] = verification
        if quant_report:
            side["quantization_report"] = quant_report
        if qat_info:
            side["qat"] = qat_info
        if control:
            side["accuracy_control"] = control
        with steps("install"):
            files = _install(final, out, runtime, side)
    return ExportResult(out, sidecar_of(out), fmt, precision, backend, files, verification, quant_report, qat_info,
                        control)


def _resolve(model, task: Task, weights: str | None) -> tuple[nn.Module, CheckpointMeta, str]:
    """The PyTorch model to export, its metadata and what to call it in messages: a classifier as
    ``weights.resolve_model`` resolves it (not an exported file), any other task's module as given."""
    if task.kind != "classification":
        if weights is not None:
            raise UsageError(f"weights= loads classifier checkpoints; load the {task.name} model's weights into it "
                             f"and export the module")
        return unwrap(model).eval(), task.meta, type(unwrap(model)).__name__
    resolved = resolve_model(model, weights, pretrained=True)
    if resolved.is_export:
        raise UsageError(f"{resolved.path.name} is an exported file already: export a model name, a checkpoint "
                         f"or a training run directory")
    return resolved.model, resolved.meta, resolved.path.name if resolved.path is not None else resolved.name


def _inspected(runtime: Runtime, path: Path, task: Task) -> dict:
    """What ``runtime.inspect`` checks of a file this machine cannot run, and that it gives the task's outputs."""
    info = runtime.inspect(path)
    names = [o["name"] for o in info.get("outputs", [])]
    if names and names != list(task.outputs):
        raise VerificationError(f"the exported file gives {', '.join(names)}, not {', '.join(task.outputs)}")
    return info


def _require(runtime: Runtime, precision: str, qat_epochs: int) -> None:
    """A missing runtime, converter or quantizer is reported before any work."""
    runtime.require_export("fp32" if qat_epochs else precision)
    if qat_epochs:
        qat.require()


def _calibration(calib, pre, calib_size: int | None, shape: tuple[int, int, int], steps: Steps,
                 split: dict) -> ImageSet | None:
    """The calibration images (``None`` without ``calib``), checked against the model's input shape."""
    if calib is None:
        return None
    with steps("read calibration data"):
        calib_set = load_images(calib, pre, limit=calib_size, split=split)
    if calib_set.images.shape[1:] != shape:
        raise UsageError(f"calibration images are {tuple(calib_set.images.shape[1:])}, the model takes {shape}")
    return calib_set


def _validation(val, calib, pre, meta, split: dict, limit: int | None, shape: tuple[int, int, int], steps: Steps,
                needed: bool) -> ImageSet | None:
    """The held-out images of the accuracy figures: ``val``, else the held-out split of a ``calib``
    spec (``None`` when no figure needs them)."""
    if val is None and not needed:
        return None
    if val is None and not is_spec(calib):
        raise UsageError("int8 accuracy is measured on held-out images: pass --val DATA (a dataset spec or class "
                         "folders the calibration images are not drawn from), or calibrate from a dataset spec, "
                         "whose held-out split is then used")
    with steps("read held-out images"):
        val_set = load_held_out(calib if val is None else val, pre, limit=limit,
                                split=split if val is None else split_of(val, meta))
    if val_set.images.shape[1:] != shape:
        raise UsageError(f"validation images are {tuple(val_set.images.shape[1:])}, the model takes {shape}")
    return val_set


def _qat_int8(net, data: str, work: Path, final: Path, fmt: str, steps: Steps, *, epochs: int, lr: float | None,
              batch_size: int | None, max_images: int | None, resolution: int, batch, opset: int,
              verbose: bool) -> tuple[nn.Module, dict]:
    """``train --qat`` of ``net`` on ``data`` (``qat.finetune``), then the int8 file of its learned
    ranges at ``final``; returns the fine-tuned network and the run's record."""
    with steps("QAT fine-tune (train --qat)"):
        tuned, info = qat.finetune(net, data, work / "qat", fmt=fmt, epochs=epochs,
                                   lr=qat.DEFAULT_LR if lr is None else lr,
                                   batch_size=batch_size or qat.DEFAULT_BATCH, resolution=resolution,
                                   max_images=qat.DEFAULT_MAX_IMAGES if max_images == -1 else max_images,
                                   reporter=None if steps is NO_STEPS else _StepsReporter(steps))
    with steps("convert the learned quantization to int8"):
        qat.save_learned_int8(tuned, fmt, final, batch=batch, opset=opset, verbose=verbose)
    return tuned, info


def qat_finetune(model, data, fmt: str = "onnx", output: str | os.PathLike | None = None, *, epochs: int = 1,
                 lr: float = qat.DEFAULT_LR, calib_size: int = DEFAULT_CALIB_SIZE, batch_size: int = qat.DEFAULT_BATCH,
                 max_images: int | None = qat.DEFAULT_MAX_IMAGES, **export_kw) -> ExportResult:
    """Quantization-aware fine-tuning (``train --qat``) of ``model`` on the labelled ``data`` (a
    dataset spec), written as an int8 ``fmt`` file (ONNX QDQ, OpenVINO IR or TFLite)
    through ``export``: verified in its runtime against the fake-quantized network and installed
    atomically. ``result.qat``: what the fine-tuning did."""
    return export(model, fmt, output, int8=True, calib=data, calib_size=calib_size, qat_epochs=epochs, qat_lr=lr,
                  qat_batch_size=batch_size, qat_max_images=max_images, **export_kw)


class _StepsReporter(Reporter):
    """QAT's epoch lines routed to the export's progress."""

    def __init__(self, steps: Steps):
        super().__init__()
        self.steps = steps

    def log(self, message: str) -> None:
        self.steps.log(message)


# ------------------------------------------------------------------------------------------
# checks


def _check_request(fmt: str, *, int8: bool, precision: str | None, calib, batch, opset, calib_size,
                   min_agreement, qat_epochs, qat_lr, qat_batch_size, qat_max_images, max_drop, int8_format,
                   val_images) -> str:
    """Every check that needs no model and no data; returns the precision."""
    runtime = by_format(fmt)
    precision = "int8" if int8 else (precision or "fp32")
    if precision not in ("fp32", "bf16", "fp16", "int8"):
        raise UsageError(f"precision must be fp32, bf16, fp16 or int8, got {precision!r}")
    if precision not in runtime.export_precisions:
        able = [r.format for r in _runtimes_writing(precision)]
        hint = f"; {precision} exports: {', '.join(able)}" if able else ""
        why = f" ({runtime.int8_note})" if precision == "int8" and runtime.int8_note else ""
        raise UsageError(f"{fmt} export writes {', '.join(runtime.export_precisions)}, not {precision}{why}{hint}")
    if batch != "dynamic" and (not _is_int(batch) or batch < 1):
        raise UsageError(f"batch must be a positive integer or 'dynamic', got {batch!r}")
    if batch == "dynamic" and not runtime.dynamic_batch:
        raise UsageError(f"{fmt} files have a fixed batch: pass an integer batch")
    if not isinstance(min_agreement, (int, float)) or isinstance(min_agreement, bool) \
            or not 0 <= min_agreement <= 1:
        raise UsageError(f"min_agreement (--min-agreement) is a share of images, in [0, 1]; got {min_agreement!r}")
    if calib_size is not None and (not _is_int(calib_size) or calib_size < 1):
        raise UsageError(f"calib_size (--calib-size) must be at least 1 image, got {calib_size!r}")
    if not _is_int(qat_epochs) or qat_epochs < 0:
        raise UsageError(f"qat_epochs must be an integer >= 0 (0: post-training quantization), got {qat_epochs!r}")
    if (fmt == "onnx" or qat_epochs) and (not _is_int(opset) or opset < MIN_OPSET):
        raise UsageError(f"opset {opset}: the export needs opset {MIN_OPSET} or newer")
    if int8_format not in INT8_FORMATS:
        raise UsageError(f"int8 format must be one of {', '.join(INT8_FORMATS)}, got {int8_format!r}")
    if int8_format != "qdq" and (fmt != "onnx" or precision != "int8" or qat_epochs):
        raise UsageError("--int8-format qoperator is a post-training ONNX Runtime form: use it with --format onnx "
                         "--int8 and no QAT")
    if max_drop is not None:
        if isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)) or not 0 <= max_drop < 100:
            raise UsageError(f"--max-drop is a top-1 drop in points, in [0, 100); got {max_drop!r}")
        if precision != "int8" or qat_epochs:
            raise UsageError("--max-drop controls post-training int8: add --int8 (and no --qat-epochs)")
        if fmt not in accuracy.FORMATS:
            raise UsageError(f"--max-drop searches the int8 layers of {', '.join(accuracy.FORMATS)} exports, "
                             f"not {fmt}")
    if val_images is not None and (not _is_int(val_images) or val_images < 1):
        raise UsageError(f"--val-images must be at least 1, got {val_images!r}")
    if qat_epochs:
        if precision != "int8":
            raise UsageError("quantization-aware fine-tuning produces an int8 model: add --int8")
        if fmt not in qat.FORMATS:
            raise UsageError(f"quantization-aware fine-tuning exports {', '.join(qat.FORMATS)}, not {fmt}")
        qat.check_schedule(qat_epochs, qat.DEFAULT_LR if qat_lr is None else qat_lr,
                           qat_batch_size or qat.DEFAULT_BATCH)
        if qat_max_images not in (-1, None) and (not _is_int(qat_max_images) or qat_max_images < 1):
            raise UsageError(f"QAT needs at least one training image, got max_images={qat_max_images!r}")
    return precision


def _runtimes_writing(precision: str) -> list[Runtime]:
    return [r for r in RUNTIMES.values() if r.format and precision in r.export_precisions]


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_dir_target(output) -> bool:
    """Whether ``output`` names a folder to export into (not a package folder such as ``x.mlpackage``)."""
    out = Path(output)
    package = out.suffix.lower() in {by_format(f).suffix for f in FORMATS}
    return (out.is_dir() and not package) or str(output).endswith(os.sep) or not out.suffix


def _check_output(output, fmt: str) -> None:
    """The output's suffix and folder, checked before the model is built."""
    if output is None:
        return
    if _is_dir_target(output):
        check_parent(Path(output) / "x")
        return
    out = Path(output)
    suffix = by_format(fmt).suffix
    if out.suffix.lower() != suffix:
        raise UsageError(f"output {out.name} does not end in {suffix} (the {fmt} suffix)")
    check_parent(out)


def _output_path(output, net: MobileNet, fmt: str, precision: str, res: int) -> Path:
    name = default_name(net, fmt, precision, res)
    if output is None:
        return Path.cwd() / name
    return Path(output) / name if _is_dir_target(output) else Path(output)


# ------------------------------------------------------------------------------------------
# verification


def verify_export(net: nn.Module, path: Path, backend: str, precision: str, calib: ImageSet | None,
                  res: int, min_agreement: float = 0.5, *, task: Task = CLASSIFICATION) -> dict:
    """Run ``path`` in ``backend`` and compare with ``net`` (a model of ``task``) on the same inputs;
    raise ``VerificationError`` if it disagrees. fp32: a classifier's logits by more than
    ``FP32_TOLERANCE``; each output of a backbone or segmenter by more than ``FP32_TOLERANCE`` times
    its scale (the largest |value| PyTorch gives, at least 1: deep feature maps reach tens, where
    float rounding alone differs by 1e-4); a detector: ``_verify_detections``. int8/bf16: top-1
    agreement below ``min_agreement``."""
    session = open_session(path, backend, threads=1, precision=precision)
    if task.kind == "detection":
        return _verify_detections(net, session, task, res)
    chans = task.in_chans
    if precision == "fp32":
        x = calib.images[:8] if calib is not None else random_inputs((chans, res, res), n=4)
    else:
        x = calib.images if calib is not None else random_inputs((chans, res, res), n=32)
    ref = task.reference(net.float(), x)
    got = _run_all(session, x, backend)
    if len(got) != len(ref):
        raise VerificationError(f"exported model gives {len(got)} outputs, PyTorch {len(ref)}")
    diffs = {}
    for name, g, r in zip(task.outputs, got, ref, strict=True):
        if g.shape != r.shape:
            label = "" if len(ref) == 1 else f"{name} of "
            raise VerificationError(f"exported model returns {label}shape {g.shape}, PyTorch {r.shape}")
        if not np.isfinite(g).all():
            raise VerificationError(f"exported model returns non-finite {name}")
        diffs[name] = float(np.abs(g - r).max())
    scale = {name: 1.0 if task.kind == "classification" else max(1.0, float(np.abs(r).max()))
             for name, r in zip(task.outputs, ref, strict=True)}
    worst = max(diffs, key=lambda name: diffs[name] / scale[name])
    diff = max(diffs.values())
    out = {"backend": backend, "precision": precision, "images": int(len(x)),
           "inputs": "calibration images" if calib is not None else "random normal", "max_abs_diff": diff}
    if task.kind != "classification":
        out["outputs"] = {name: {"max_abs_diff": diffs[name], "scale": scale[name]} for name in task.outputs}
    if task.kind == "classification":
        agree = float((got[0].argmax(1) == ref[0].argmax(1)).mean())
        out["top1_agreement"] = agree
        if calib is not None and calib.labels is not None and precision != "fp32":
            out["top1_torch"] = float((ref[0].argmax(1) == calib.labels).mean())
            out["top1_export"] = float((got[0].argmax(1) == calib.labels).mean())
    elif task.kind == "segmentation":  # the share of pixels given the same class
        out["pixel_agreement"] = float((got[0].argmax(1) == ref[0].argmax(1)).mean())
    if precision == "fp32":
        out["tolerance"] = FP32_TOLERANCE
        if diffs[worst] > FP32_TOLERANCE * scale[worst]:
            what = "logits differ" if task.kind == "classification" else f"output {worst!r} differs"
            limit = f"{FP32_TOLERANCE:g}" + ("" if scale[worst] == 1 else f" x its scale {scale[worst]:.3g}")
            raise VerificationError(f"{backend} {what} from PyTorch by {diffs[worst]:.2e} (> {limit}); "
                                    f"the export is discarded")
    else:
        out["min_agreement"] = min_agreement
        if agree < min_agreement:
            raise VerificationError(f"{precision} model agrees with PyTorch on top-1 for {agree:.1%} of "
                                    f"{len(x)} images (< {min_agreement:.0%}); the export is discarded")
    return out


def _run_all(session: Session, x: np.ndarray, backend: str) -> list[np.ndarray]:
    """Every output of ``session`` on ``x``; a runtime's failure is a ``VerificationError``."""
    try:
        return session.run_all(x)
    except Exception as exc:  # noqa: BLE001
        raise VerificationError(f"{backend} failed to run the exported file: {first_line(exc, 200)}") from exc


def _verify_detections(net: nn.Module, session: Session, task: Task, res: int) -> dict:
    """A detector's file against ``net`` on ``DETECTION_IMAGES`` structured images (``tasks.structured_images``):
    each image's detections are paired with PyTorch's (same label, boxes within ``box_tolerance(res)`` pixels,
    scores within ``FP32_TOLERANCE``); a detection with no partner is allowed only at the end of its list
    (its score within ``FP32_TOLERANCE`` of the lowest kept: the cut of the top-k, where scores that
    differ by rounding may trade places). Anything else raises ``VerificationError``."""
    images = structured_images(DETECTION_IMAGES, res).numpy()
    box_tol = box_tolerance(res)
    counts, edge, box_diff, score_diff = [], 0, 0.0, 0.0
    for i, image in enumerate(images):
        ref = task.reference(net.float(), image)
        got = _run_all(session, image, session.backend)
        if len(got) != 3 or got[0].shape[1:] != (4,) or not all(len(g) == len(got[0]) for g in got):
            raise VerificationError(f"exported detector gives {[g.shape for g in got]}, not K x 4 boxes, K scores "
                                    f"and K labels")
        if not (np.isfinite(got[0]).all() and np.isfinite(got[1]).all()):
            raise VerificationError("exported detector returns non-finite boxes or scores")
        pairs, unpaired = _pair_detections(got, ref, box_tol)
        if unpaired:
            raise VerificationError(f"{session.backend} finds {len(got[0])} objects in test image {i}, PyTorch "
                                    f"{len(ref[0])}; {unpaired} of them have no match (same label, boxes within "
                                    f"{box_tol:g} px, scores within {FP32_TOLERANCE:g}); the export is "
                                    f"discarded")
        counts.append(len(ref[0]))
        edge += max(len(ref[0]), len(got[0])) - len(pairs)
        if pairs:
            g, r = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
            box_diff = max(box_diff, float(np.abs(got[0][g] - ref[0][r]).max()))
            score_diff = max(score_diff, float(np.abs(got[1][g] - ref[1][r]).max()))
    return {"backend": session.backend, "precision": "fp32", "images": len(images), "inputs": "structured test images",
            "detections": counts, "max_box_diff": box_diff, "max_score_diff": score_diff, "unpaired_at_cut": edge,
            "box_tolerance": box_tol, "tolerance": FP32_TOLERANCE}


def box_tolerance(res: int) -> float:
    """How far (pixels) an exported detector's box edges may sit from PyTorch's on a ``res`` pixel image."""
    return max(BOX_TOLERANCE, BOX_RTOL * res)


def _pair_detections(got: list[np.ndarray], ref: list[np.ndarray], box_tol: float = BOX_TOLERANCE
                     ) -> tuple[list[tuple[int, int]], int]:
    """Pairs (index in ``got``, index in ``ref``) of matching detections, greedily by PyTorch's order, and
    the count of detections left unpaired that are not at the cut (see ``_verify_detections``)."""
    (gb, gs, gl), (rb, rs, rl) = got, ref
    box = np.abs(gb[:, None, :] - rb[None, :, :]).max(-1) if len(gb) and len(rb) else np.zeros((len(gb), len(rb)))
    fits = (gl[:, None] == rl[None, :]) & (box <= box_tol) & (np.abs(gs[:, None] - rs[None, :]) <= FP32_TOLERANCE)
    pairs, used = [], np.zeros(len(gb), bool)
    for r in range(len(rb)):
        candidates = np.flatnonzero(fits[:, r] & ~used)
        if len(candidates):
            g = candidates[np.argmin(box[candidates, r])]
            used[g] = True
            pairs.append((int(g), r))
    paired_ref = np.zeros(len(rb), bool)
    paired_ref[[r for _, r in pairs]] = True
    cut = min(gs.min() if len(gs) else np.inf, rs.min() if len(rs) else np.inf) + FP32_TOLERANCE
    unpaired = int((gs[~used] > cut).sum() + (rs[~paired_ref] > cut).sum())
    return pairs, unpaired


# ------------------------------------------------------------------------------------------
# installation


def _install(src: Path, out: Path, runtime: Runtime, meta: dict) -> list[Path]:
    """Publish the verified file(s) from the staging folder onto ``out``: the companions first (an IR's
    or ncnn's .bin, which the main file names by its own stem), then the main file (a file, or a
    package folder such as Core ML's), then the sidecar."""
    files = [publish(src.with_suffix(s), out.with_suffix(s)) for s in runtime.companions]
    files.insert(0, publish(src, out))
    publish(write_sidecar(src, meta), sidecar_of(out))
    return files
