"""Export a MobileNet to ONNX, OpenVINO IR or TFLite, verified in its runtime before it is kept.

The steps of ``export``: build the inference graph (``graph.deploy_module``: BN folded, dropout
gone, global pools, head as 1x1 convs, native hard-swish), convert it, quantize it when asked,
load the result in its runtime and compare with the PyTorch model on the same inputs, then move
the file(s) and a JSON sidecar into place. Everything is written into a temporary directory next
to the output and renamed at the end, so a failed conversion or verification leaves nothing
behind under the real name and a reader never sees half a file.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..core.errors import UsageError
from ..core.preprocessing import Preprocessing, cifar, imagenet
from ..models.network import MobileNet
from .calibration import DEFAULT_CALIB_SIZE, ImageSet, load_images, random_inputs
from .graph import deploy_module, reduce_mean_to_global_pool, strip_metadata
from .runtimes import open_session, require

FORMATS = ("onnx", "openvino", "tflite")
SUFFIX = {"onnx": ".onnx", "openvino": ".xml", "tflite": ".tflite"}
RUNTIME = {"onnx": "onnxruntime", "openvino": "openvino", "tflite": "litert"}
FP32_TOLERANCE = 1e-4
DEFAULT_OPSET = 18
SIDECAR_FORMAT = "mobilenets-export"


class VerificationError(RuntimeError):
    """The exported file does not compute what the PyTorch model computes (the file is discarded)."""


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

    @property
    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files if f.exists())

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(path=str(self.path), sidecar=str(self.sidecar), files=[str(f) for f in self.files],
                 size_bytes=self.size_bytes)
        return d


class ExportError(UsageError):
    """A converter failed on a valid request (reported as one line)."""


def default_name(model: MobileNet, fmt: str, precision: str, resolution: int) -> str:
    """``mobilenet_v3_large-w1.0-r224-onnx-int8.onnx``: model, width, resolution, format, precision."""
    variant = getattr(getattr(model, "checkpoint_meta", None), "variant", None) or model.config.family
    return f"{variant}-w{float(model.config.width)!r}-r{resolution}-{fmt}-{precision}{SUFFIX[fmt]}"


def export(model, fmt: str, output: str | os.PathLike | None = None, *, int8: bool = False,
           calib=None, resolution: int | None = None, batch: int | str = 1, precision: str | None = None,
           nhwc: bool = False, verify: bool = True, weights: str | None = None, opset: int = DEFAULT_OPSET,
           calib_size: int = DEFAULT_CALIB_SIZE, min_agreement: float = 0.5, report: bool = False,
           verbose: bool = False, qat_epochs: int = 0, qat_lr: float | None = None,
           qat_batch_size: int | None = None, qat_max_images: int | None = -1, qat_data=None) -> ExportResult:
    """Export ``model`` (a MobileNet, a model name, or a checkpoint path) as ``fmt``.

    ``int8``: post-training static quantization with ``calib`` (a directory of images, a dataset
    spec, an N x C x H x W array). ``precision``: "fp32" (default), "bf16" (OpenVINO: the IR runs
    with a bf16 inference hint) or "int8" (same as ``int8=True``). ``batch``: an int or "dynamic".
    ``output``: a file, a directory (named by ``default_name``) or None (the current directory).
    ``verify``: load the file in its runtime and compare with PyTorch (fp32: max |diff| <= 1e-4 on
    the logits; int8/bf16: top-1 agreement >= ``min_agreement``); a failure raises
    ``VerificationError`` and nothing is written. ``report``: for int8, also measure fp32 vs int8
    size, accuracy (labelled calibration data) and latency on the same runtime.
    ``qat_epochs``: 0 (default) is post-training quantization; N > 0 (int8, ONNX or OpenVINO) is
    quantization-aware fine-tuning for N epochs on ``calib``, which must then be labelled (a
    dataset spec or class folders): see ``mobilenets.deploy.qat`` (``qat_lr``, ``qat_batch_size``,
    ``qat_max_images``: its learning rate, batch and training images, -1 meaning its default;
    ``qat_data``: labelled training data other than ``calib``, e.g. a data set already in memory).
    """
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    precision = "int8" if int8 else (precision or "fp32")
    if precision not in ("fp32", "bf16", "int8"):
        raise UsageError(f"precision must be fp32, bf16 or int8, got {precision!r}")
    if precision == "bf16" and fmt != "openvino":
        raise UsageError("bf16 export is an OpenVINO inference precision: use --format openvino")
    if precision == "int8" and calib is None:
        raise UsageError("int8 needs calibration data: pass calib (--calib DATA), a folder of images or a dataset spec")
    if batch != "dynamic" and (not isinstance(batch, int) or batch < 1):
        raise UsageError(f"batch must be a positive integer or 'dynamic', got {batch!r}")
    if batch == "dynamic" and fmt == "tflite":
        raise UsageError("TFLite files have a fixed batch: pass an integer batch")
    if not isinstance(qat_epochs, int) or isinstance(qat_epochs, bool) or qat_epochs < 0:
        raise UsageError(f"qat_epochs must be an integer >= 0 (0: post-training quantization), got {qat_epochs!r}")
    if qat_epochs and precision != "int8":
        raise UsageError("quantization-aware fine-tuning produces an int8 model: add --int8")
    if qat_epochs and fmt not in ("onnx", "openvino"):
        raise UsageError(f"quantization-aware fine-tuning exports onnx or openvino, not {fmt} "
                         f"(TFLite int8 is post-training only)")
    if qat_epochs:
        _require_torchao()
    backend = RUNTIME[fmt]
    require(backend)  # a missing runtime is reported before any work
    if fmt == "tflite":
        _require_litert_torch()
    if fmt == "openvino" or (precision == "int8" and fmt == "onnx"):
        _require_quantizer(fmt, precision)

    net = resolve_model(model, weights)
    res = int(resolution or net.config.resolution)
    if res < net.config.output_stride:
        raise UsageError(f"resolution {res} is too small for {net.config.family} (at least {net.config.output_stride})")
    pre = _preprocessing(net, res)
    out = _output_path(output, net, fmt, precision, res)
    chans = net.config.in_chans

    calib_set = None
    if calib is not None:
        calib_set = load_images(calib, pre, limit=calib_size)
        if calib_set.images.shape[1:] != (chans, res, res):
            raise UsageError(f"calibration images are {tuple(calib_set.images.shape[1:])}, the model takes "
                             f"{(chans, res, res)}")
    qat_data = None
    if qat_epochs:
        from . import qat
        qat._check_schedule(qat_epochs, qat.DEFAULT_LR if qat_lr is None else qat_lr,
                            qat_batch_size or qat.DEFAULT_BATCH)
        qat_data = qat.load_training_data(calib if qat_data is None else qat_data, net, pre,
                                          max_images=qat.DEFAULT_MAX_IMAGES if qat_max_images == -1 else qat_max_images)

    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.stem}.", dir=out.parent))
    try:
        deploy = deploy_module(net, nhwc=nhwc)
        fixed = 2 if batch == "dynamic" else int(batch)  # batch 1 would specialise a dynamic dim
        example = torch.zeros((fixed, res, res, chans) if nhwc else (fixed, chans, res, res))
        fp32_file = work / f"fp32{SUFFIX[fmt]}"
        converters = {"onnx": _to_onnx, "openvino": _to_openvino, "tflite": _to_tflite}
        # TFLite int8 and QAT convert from the torch module; their fp32 file is only needed for the report.
        if not ((fmt == "tflite" or qat_epochs) and precision == "int8" and not report):
            converters[fmt](deploy, example, fp32_file, dynamic=batch == "dynamic", opset=opset, verbose=verbose)
        final = fp32_file
        qat_info: dict = {}
        if precision == "int8" and qat_epochs:
            final = work / f"int8{SUFFIX[fmt]}"
            qm = qat.finetune(net, qat_data, calib_set.images, epochs=qat_epochs,
                              lr=qat.DEFAULT_LR if qat_lr is None else qat_lr,
                              batch_size=qat_batch_size or qat.DEFAULT_BATCH, resolution=res, nhwc=nhwc, pre=pre)
            qat.save_int8(qm, fmt, final, batch=batch, opset=opset, verbose=verbose)
            qat_info = qm.info
        elif precision == "int8":
            from . import quantize
            calib_nchw = calib_set.images
            final = work / f"int8{SUFFIX[fmt]}"
            quantize.quantize_file(fmt, fp32_file, final, calib_nchw, nhwc=nhwc, module=deploy, example=example)

        meta = {"format": SIDECAR_FORMAT, "model": getattr(getattr(net, "checkpoint_meta", None), "variant", None)
                or net.config.family, "config": net.config.to_dict(), "export_format": fmt, "backend": backend,
                "precision": precision, "resolution": res, "batch": batch,
                "input_layout": "NHWC" if nhwc else "NCHW", "preprocessing": pre.to_dict(),
                "class_names": _class_names(net)}
        # The sidecar goes next to the work files too: sessions read the layout and precision from it.
        fp32_file.with_suffix(".json").write_text(json.dumps({**meta, "precision": "fp32"}))
        final.with_suffix(".json").write_text(json.dumps(meta))
        verification: dict = {}
        if verify:
            verification = verify_export(net, final, backend, precision, calib_set, res, min_agreement)
        quant_report: dict = {}
        if report and precision == "int8":
            from .quantize import compare
            quant_report = compare(fp32_file, final, backend, calib_set)
        meta["verification"] = verification
        if quant_report:
            meta["quantization_report"] = quant_report
        if qat_info:
            meta["qat"] = qat_info
        files = _install(final, out, fmt)
        side = out.with_suffix(".json")
        _atomic_text(side, json.dumps(meta, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ExportResult(out, side, fmt, precision, backend, files, verification, quant_report, qat_info)


def resolve_model(model, weights: str | None = None) -> MobileNet:
    """A MobileNet in eval mode from a module, a model name (+ ``weights``) or a checkpoint path."""
    from ..weights import create_model
    from ..weights.io import unwrap
    if isinstance(model, nn.Module):
        model = unwrap(model)
        if not isinstance(model, MobileNet):
            raise UsageError(f"export takes a mobilenets MobileNet, got {type(model).__name__}")
        return model.eval()
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if weights is None and (path.suffix in (".safetensors", ".pth", ".pt") or path.is_file()):
            from ..weights.io import load_checkpoint
            return load_checkpoint(path)[0]
        if weights in ("random", "none"):
            return create_model(str(model)).eval()
        return create_model(str(model), pretrained=weights or True).eval()
    raise UsageError(f"cannot export a {type(model).__name__}: pass a MobileNet, a model name or a checkpoint")


def _preprocessing(net: MobileNet, res: int) -> Preprocessing:
    meta = getattr(net, "checkpoint_meta", None)
    pre = getattr(meta, "preprocessing", None) or (cifar if net.config.cifar_stem else imagenet)(net.config.resolution)
    return dataclasses.replace(pre, resolution=res)


def _class_names(net: MobileNet) -> list[str] | None:
    names = getattr(getattr(net, "checkpoint_meta", None), "class_names", None)
    return list(names) if names and len(names) == net.config.num_classes else None


def _output_path(output, net: MobileNet, fmt: str, precision: str, res: int) -> Path:
    name = default_name(net, fmt, precision, res)
    if output is None:
        return Path.cwd() / name
    out = Path(output)
    if out.is_dir() or str(output).endswith(os.sep) or not out.suffix:
        return out / name
    if out.suffix.lower() != SUFFIX[fmt]:
        raise UsageError(f"output {out.name} does not end in {SUFFIX[fmt]} (the {fmt} suffix)")
    return out


# ------------------------------------------------------------------------------------------
# converters


def _to_onnx(module: nn.Module, example: torch.Tensor, path: Path, *, dynamic: bool, opset: int,
             verbose: bool = False) -> None:
    """torch.onnx (the torch.export-based exporter), then our ONNX-level clean-ups."""
    import onnx
    if opset < 17:
        raise UsageError(f"opset {opset}: the export needs opset 17 or newer")
    kwargs = {}
    if dynamic:
        kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1, max=4096)},)
    with warnings.catch_warnings(), _quiet():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(module, (example,), None, opset_version=opset, dynamo=True,
                                        input_names=["input"], output_names=["logits"], verbose=verbose,
                                        report=False, **kwargs)
        except Exception as exc:  # noqa: BLE001 - surface the exporter's first line
            raise ExportError(f"torch.onnx export failed: {str(exc).strip().splitlines()[0][:300]}") from exc
    proto = program.model_proto
    reduce_mean_to_global_pool(proto)
    strip_metadata(proto)
    if dynamic:
        dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_param = "batch"
        odim = proto.graph.output[0].type.tensor_type.shape.dim[0]
        odim.Clear()
        odim.dim_param = "batch"
    proto.producer_name = "mobilenets"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def _to_openvino(module: nn.Module, example: torch.Tensor, path: Path, *, dynamic: bool, opset: int,
                 verbose: bool = False) -> None:
    """OpenVINO IR from the torch module (``openvino.convert_model``), fp32 weights."""
    import openvino as ov
    shape = list(example.shape)
    if dynamic:
        shape[0] = -1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ovm = ov.convert_model(module, example_input=example, input=[ov.PartialShape(shape)])
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"openvino conversion failed: {str(exc).strip().splitlines()[0][:300]}") from exc
    ovm.outputs[0].get_tensor().set_names({"logits"})
    ovm.inputs[0].get_tensor().set_names({"input"})
    ov.save_model(ovm, str(path), compress_to_fp16=False)


def _to_tflite(module: nn.Module, example: torch.Tensor, path: Path, *, dynamic: bool, opset: int,
               verbose: bool = False) -> None:
    """TFLite through LiteRT's PyTorch converter (litert-torch)."""
    litert_torch = _require_litert_torch()
    try:
        with warnings.catch_warnings(), _quiet():
            warnings.simplefilter("ignore")
            edge = litert_torch.convert(module, (example,))
            edge.export(str(path))
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"litert-torch conversion failed: {str(exc).strip().splitlines()[0][:300]}") from exc


@contextlib.contextmanager
def _quiet():
    """Converters print progress to stdout and log failed attempts of their fallbacks: keep the CLI clean."""
    import logging
    loggers = [logging.getLogger(n) for n in ("torch._guards", "torch.export", "torch._dynamo", "torch.onnx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _require_litert_torch():
    try:
        import litert_torch
    except ImportError:
        raise UsageError("TFLite export needs LiteRT's PyTorch converter: pip install litert-torch ai-edge-litert") \
            from None
    return litert_torch


def _require_torchao() -> None:
    try:
        import torchao.quantization.pt2e  # noqa: F401
    except ImportError:
        raise UsageError("quantization-aware fine-tuning needs torchao (PT2E): pip install torchao") from None


def _require_quantizer(fmt: str, precision: str) -> None:
    if fmt == "openvino":
        require("openvino")
        if precision == "int8":
            try:
                import nncf  # noqa: F401
            except ImportError:
                raise UsageError("OpenVINO int8 needs NNCF: pip install nncf") from None
    elif fmt == "onnx":
        try:
            import onnxruntime.quantization  # noqa: F401
        except ImportError:
            raise UsageError("ONNX int8 needs onnxruntime's quantization tools: pip install onnxruntime") from None


# ------------------------------------------------------------------------------------------
# verification


def verify_export(net: MobileNet, path: Path, backend: str, precision: str, calib: ImageSet | None,
                  res: int, min_agreement: float = 0.5) -> dict:
    """Run ``path`` in ``backend`` and compare with ``net`` on the same inputs; raise if it disagrees."""
    session = open_session(path, backend, threads=1, precision=precision)
    chans = net.config.in_chans
    if precision == "fp32":
        x = calib.images[:8] if calib is not None else random_inputs((chans, res, res), n=4)
    else:
        x = calib.images if calib is not None else random_inputs((chans, res, res), n=32)
    with torch.inference_mode():
        ref = net.eval().float()(torch.from_numpy(np.ascontiguousarray(x))).numpy()
    try:
        got = session.run(x)
    except Exception as exc:  # noqa: BLE001
        raise VerificationError(f"{backend} failed to run the exported file: {str(exc).splitlines()[0][:200]}") \
            from exc
    if got.shape != ref.shape:
        raise VerificationError(f"exported model returns shape {got.shape}, PyTorch {ref.shape}")
    if not np.isfinite(got).all():
        raise VerificationError("exported model returns non-finite logits")
    diff = float(np.abs(got - ref).max())
    agree = float((got.argmax(1) == ref.argmax(1)).mean())
    out = {"backend": backend, "precision": precision, "images": int(len(x)),
           "inputs": "calibration images" if calib is not None else "random normal",
           "max_abs_diff": diff, "top1_agreement": agree}
    if calib is not None and calib.labels is not None and precision != "fp32":
        out["top1_torch"] = float((ref.argmax(1) == calib.labels).mean())
        out["top1_export"] = float((got.argmax(1) == calib.labels).mean())
    if precision == "fp32":
        out["tolerance"] = FP32_TOLERANCE
        if diff > FP32_TOLERANCE:
            raise VerificationError(f"{backend} logits differ from PyTorch by {diff:.2e} (> {FP32_TOLERANCE:g}); "
                                    f"the export is discarded")
    else:
        out["min_agreement"] = min_agreement
        if agree < min_agreement:
            raise VerificationError(f"{precision} model agrees with PyTorch on top-1 for {agree:.1%} of "
                                    f"{len(x)} images (< {min_agreement:.0%}); the export is discarded")
    return out


# ------------------------------------------------------------------------------------------
# atomic installation


def _install(src: Path, out: Path, fmt: str) -> list[Path]:
    """Move the verified file(s) from the work directory to ``out`` (the .bin before the .xml)."""
    files = []
    if fmt == "openvino":
        _replace(src.with_suffix(".bin"), out.with_suffix(".bin"))
        files.append(out.with_suffix(".bin"))
        # The IR names its weights file after itself; the .xml refers to it implicitly by stem.
    _replace(src, out)
    files.insert(0, out)
    return files


def _replace(src: Path, dst: Path) -> None:
    with open(src, "rb") as f:
        os.fsync(f.fileno())
    os.replace(src, dst)


def _atomic_text(path: Path, text: str) -> None:
    from ..core.files import atomic_write
    atomic_write(path, text.encode())
