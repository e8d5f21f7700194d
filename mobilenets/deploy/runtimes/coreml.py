"""Core ML: ML programs written by coremltools from the traced module, run by Core ML on macOS.

An export is an ``.mlpackage`` DIRECTORY (iOS 16 / macOS 13 and newer): fp32, fp16 compute (with fp32
input and output) or int8 weights (``linear_quantize_weights``, computed in float). Core ML runs only on
macOS; elsewhere ``inspect_coreml`` checks what can be checked without running a package: that it loads,
its ``input`` (N x C x H x W) -> outputs interface, its operations, precision, int8 weights and weight file.
"""
from __future__ import annotations

import importlib
import os
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ...core.errors import UsageError
from ...models.meta import CheckpointMeta
from ..common import NO_STEPS, ExportError, Steps, first_line, quiet
from .base import Runtime, Session, load_error

TARGET = "iOS16"  # = macOS 13: the first with fp16 input/output and weights as constexpr_affine_dequantize
MAX_BATCH = 4096  # the batch range of a dynamic export, as the ONNX export's
COMPUTE_PRECISION = {"fp32": "FLOAT32", "fp16": "FLOAT16"}
CONSTANT_OPS = ("const", "constexpr_affine_dequantize", "constexpr_blockwise_shift_scale", "constexpr_lut_to_dense",
                "constexpr_sparse_to_dense", "constexpr_cast")
INT8_OPS = {"constexpr_affine_dequantize": "quantized_data", "constexpr_blockwise_shift_scale": "data"}


def to_coreml(module: nn.Module, example: torch.Tensor, path: Path, *, dynamic: bool = False, opset: int = 0,
              verbose: bool = False, steps: Steps = NO_STEPS, precision: str = "fp32",
              outputs: Sequence[str] = ("logits",)) -> None:
    """An ML program of ``module`` (traced with ``torch.jit.trace``, coremltools' stable PyTorch path) saved
    as the ``.mlpackage`` directory ``path``: input ``input`` of the example's shape (with ``dynamic`` a batch
    of 1 to 4096), the module's outputs named ``outputs`` (a classifier's ``logits``), all float32;
    ``precision`` "fp16" computes in fp16. ``opset`` and ``verbose`` are accepted for the converter
    interface and unused."""
    ct = RUNTIME.require()
    if precision not in COMPUTE_PRECISION:
        raise UsageError(f"Core ML export computes in {' or '.join(COMPUTE_PRECISION)}, not {precision!r}")
    shape: tuple = tuple(int(d) for d in example.shape)
    if dynamic:
        shape = (ct.RangeDim(lower_bound=1, upper_bound=MAX_BATCH, default=shape[0], symbol="batch"), *shape[1:])
    with steps("trace"), quiet():
        try:
            with torch.no_grad():
                traced = torch.jit.trace(module, example)
            mlmodel = ct.convert(traced, inputs=[ct.TensorType(name="input", shape=shape, dtype=np.float32)],
                                 outputs=[ct.TensorType(name=n, dtype=np.float32) for n in outputs],
                                 convert_to="mlprogram",
                                 minimum_deployment_target=getattr(ct.target, TARGET),
                                 compute_precision=getattr(ct.precision, COMPUTE_PRECISION[precision]))
        except Exception as exc:  # noqa: BLE001 - surface the converter's first line
            raise ExportError(f"coremltools conversion failed: {first_line(exc)}") from exc
    with steps("write"), quiet():
        save_package(mlmodel, Path(path))


def quantize_coreml(src: Path, dst: Path, calib: np.ndarray | None = None, *, module: nn.Module | None = None,
                    example: torch.Tensor | None = None, **_) -> Path:
    """The fp32 package ``src`` with int8 weights (linear symmetric, per output channel; coremltools leaves
    tensors of 2048 elements or fewer in float), saved as the package ``dst``. Weights-only quantization
    needs no images: ``calib`` (and ``module``, ``example``) are accepted for the interface and ignored."""
    ct = RUNTIME.require()
    from coremltools.optimize import coreml as cto
    with quiet():
        try:
            model = ct.models.MLModel(str(src), skip_model_load=True)
            config = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(
                mode="linear_symmetric", dtype="int8", granularity="per_channel"))
            quantized = cto.linear_quantize_weights(model, config)
        except Exception as exc:  # noqa: BLE001
            raise ExportError(f"coremltools int8 weight quantization failed: {first_line(exc)}") from exc
        save_package(quantized, Path(dst))
    return Path(dst)


def save_package(mlmodel, path: Path) -> None:
    """Save ``mlmodel`` at exactly ``path`` (coremltools insists on the ``.mlpackage`` suffix, so it is
    written in a scratch directory beside it and moved), replacing an older package or file there."""
    scratch = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        try:
            mlmodel.save(str(scratch / "model.mlpackage"))
        except Exception as exc:  # noqa: BLE001
            raise ExportError(f"coremltools could not write {path.name}: {first_line(exc)}") from exc
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        os.replace(scratch / "model.mlpackage", path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def runs_here() -> str | None:
    """None where Core ML can run a package (macOS, with coremltools' native library), else why not."""
    if sys.platform != "darwin":
        system = {"linux": "Linux", "win32": "Windows"}.get(sys.platform, sys.platform)
        return (f"Core ML models run only on macOS (coremltools has no runtime on {system}); "
                f"this file was checked, not run")
    try:
        with quiet():
            importlib.import_module("coremltools.libcoremlpython")
    except ImportError as exc:
        return f"coremltools cannot run Core ML models here: its native library does not load ({first_line(exc)})"
    return None


# ------------------------------------------------------------------------------------------
# inspect


def inspect_coreml(path: str | os.PathLike) -> dict:
    """What can be verified of a package without running it: it loads; it takes one float ``input`` of
    N x C x H x W and gives its outputs (``outputs``: name, shape and type of each, in the program's
    order; a classifier's one ``logits`` must be N x classes, ``output`` and ``classes`` say them); its
    MIL operations (``ops``: those that compute, ``op_types``: their count by type, ``constants``: the
    weight and constant ops), its compute precision (the float type of what the compute ops write: fp32,
    fp16 or mixed), its int8 weights, that its weight file holds every weight the program reads, and
    its size. A package that fails any of these is a one-line ``UsageError``."""
    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"{path}: not a Core ML package (an .mlpackage directory)")
    ct = RUNTIME.require()
    from coremltools.proto import MIL_pb2
    with quiet():
        try:
            model = ct.models.MLModel(str(path), skip_model_load=True)
            spec = model.get_spec()
        except Exception as exc:  # noqa: BLE001 - any unreadable package is the same one-line error
            raise UsageError(f"{path}: not a readable Core ML package ({first_line(exc)})") from None
    if spec.WhichOneof("Type") != "mlProgram":
        raise UsageError(f"{path}: a Core ML {spec.WhichOneof('Type')} model, not an ML program")
    inputs, outputs = _features(spec.description.input), _features(spec.description.output)
    if len(inputs) != 1 or inputs[0]["name"] != "input" or len(inputs[0]["shape"] or ()) != 4:
        raise UsageError(f"{path}: takes {_say(inputs)}, not one 'input' of N x C x H x W")
    if not outputs:
        raise UsageError(f"{path}: gives no output")

    fn = spec.mlProgram.functions.get("main")
    if fn is None or fn.opset not in fn.block_specializations:
        raise UsageError(f"{path}: its ML program has no main function")
    block = fn.block_specializations[fn.opset]
    ops = list(_operations(block))
    dtype = MIL_pb2.DataType.Name
    op_types = Counter(op.type for op in ops if op.type not in CONSTANT_OPS)
    floats = {dtype(out.type.tensorType.dataType) for op in ops if op.type not in (*CONSTANT_OPS, "cast")
              for out in op.outputs if out.type.HasField("tensorType")} & {"FLOAT16", "FLOAT32"}
    int8 = sum(1 for op in ops if op.type in INT8_OPS and dtype(
        op.attributes[INT8_OPS[op.type]].type.tensorType.dataType) in ("INT8", "UINT8"))
    float_weights = sum(1 for op in ops if op.type == "const" and _is_float_weight(op.outputs[0], dtype))
    _check_weight_file(path, model, ops)

    outputs = [{**out, "shape": out["shape"] or _block_output_shape(block, ops, i)} for i, out in enumerate(outputs)]
    output_shape = outputs[0]["shape"]
    logits = len(outputs) == 1 and outputs[0]["name"] == "logits"
    if logits and output_shape is not None and len(output_shape) != 2:
        raise UsageError(f"{path}: its 'logits' have shape {output_shape}, not N x classes")
    target = next((t.name for t in ct.target if t.value == spec.specificationVersion), None)
    return {"format": "coreml", "path": str(path), "spec_version": spec.specificationVersion,
            "deployment_target": target, "input": inputs[0], "output": outputs[0], "outputs": outputs,
            "classes": output_shape[1] if logits and output_shape else None, "ops": sum(op_types.values()),
            "op_types": dict(op_types.most_common()), "constants": len(ops) - sum(op_types.values()),
            "precision": _precision(floats),
            "int8": int8 > 0, "int8_weights": int8, "float_weights": float_weights,
            "size_bytes": sum(f.stat().st_size for f in path.rglob("*") if f.is_file())}


def _features(features) -> list[dict]:
    """name, shape (None for a flexible dimension) and element type of each input or output."""
    from coremltools.proto import FeatureTypes_pb2
    out = []
    for feature in features:
        kind = feature.type.WhichOneof("Type")
        if kind != "multiArrayType":
            out.append({"name": feature.name, "shape": None, "dtype": kind})
            continue
        array = feature.type.multiArrayType
        shape: list[int | None] = [int(d) for d in array.shape]
        if array.WhichOneof("ShapeFlexibility") == "shapeRange":
            shape = [int(r.lowerBound) if r.lowerBound == r.upperBound else None for r in array.shapeRange.sizeRanges]
        elif array.WhichOneof("ShapeFlexibility") == "enumeratedShapes":
            options = [tuple(s.shape) for s in array.enumeratedShapes.shapes]
            shape = [int(d[0]) if len(set(d)) == 1 else None for d in zip(*options, strict=False)]
        dtype = FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(array.dataType).lower()
        out.append({"name": feature.name, "shape": tuple(shape) or None, "dtype": dtype})
    return out


def _precision(floats: set[str]) -> str | None:
    """fp16 or fp32 when the compute ops write only that float type, mixed when both."""
    if len(floats) > 1:
        return "mixed"
    return {"FLOAT16": "fp16", "FLOAT32": "fp32"}.get(next(iter(floats), ""))


def _say(features: list[dict]) -> str:
    return ", ".join(f"{f['name']!r} {f['shape']}" for f in features) or "nothing"


def _operations(block):
    """Every operation of a MIL block, nested blocks (conditions, loops) included."""
    for op in block.operations:
        yield op
        for inner in op.blocks:
            yield from _operations(inner)


def _is_float_weight(value, dtype) -> bool:
    """A float constant of 2 or more dimensions: a convolution's or linear layer's weight."""
    tensor = value.type.tensorType
    return value.type.HasField("tensorType") and tensor.rank >= 2 and dtype(tensor.dataType) in ("FLOAT16", "FLOAT32")


def _block_output_shape(block, ops, index: int = 0) -> tuple[int | None, ...] | None:
    """The shape the program gives its output ``index`` (a flexible batch leaves the description's shape
    empty)."""
    name = block.outputs[index] if len(block.outputs) > index else None
    for op in ops:
        for out in op.outputs:
            if out.name == name and out.type.HasField("tensorType"):
                dims = out.type.tensorType.dimensions
                return tuple(int(d.constant.size) if d.WhichOneof("dimension") == "constant" else None for d in dims)
    return None


def _check_weight_file(path: Path, model, ops) -> None:
    """Every weight the program reads from a file lies within that file."""
    root = Path(model.weights_dir) if model.weights_dir else path / "Data" / "com.apple.CoreML" / "weights"
    ends: dict[str, int] = {}
    for op in ops:
        for value in op.attributes.values():
            if value.WhichOneof("value") == "blobFileValue":
                blob = value.blobFileValue
                ends[blob.fileName] = max(ends.get(blob.fileName, 0), int(blob.offset))
    for name, end in ends.items():
        file = root / name.removeprefix("@model_path/weights/")
        if not file.is_file() or file.stat().st_size <= end:
            raise UsageError(f"{path}: its weight file {file.name} is missing or shorter than the program reads")


# ------------------------------------------------------------------------------------------
# session


class CoreMLSession(Session):
    """A Core ML package run by Core ML on the CPU (``ComputeUnit.CPU_ONLY``; macOS only). Core ML
    chooses its own threads: ``threads`` is recorded, not applied."""

    backend = "coreml"

    def __init__(self, path: str | os.PathLike, *, threads: int = 1, precision: str = "fp32",
                 meta: CheckpointMeta | dict | None = None):
        ct = RUNTIME.require()
        reason = runs_here()
        if reason:
            raise UsageError(reason)
        path = Path(path)
        super().__init__(path=path, threads=threads, precision=precision, meta=meta)
        try:
            with quiet():
                self.model = ct.models.MLModel(str(path), compute_units=ct.ComputeUnit.CPU_ONLY)
        except Exception as exc:  # noqa: BLE001
            raise load_error(self.backend, path, exc) from None
        description = self.model.get_spec().description
        self._input = description.input[0].name
        self._outputs = self._name_outputs([out.name for out in description.output])
        self._declare_input(_features(description.input[:1])[0]["shape"] or (), fixed_batch=True)

    def _run_all(self, x: np.ndarray) -> list[np.ndarray]:
        result = self.model.predict({self._input: x})
        return [np.asarray(result[name], dtype=np.float32) for name in self._outputs]


RUNTIME = Runtime(backend="coreml", module="coremltools", package="coremltools", dist="coremltools", format="coreml",
                  suffix=".mlpackage", precisions=("fp32", "fp16", "int8"), export_precisions=("fp32", "fp16", "int8"),
                  dynamic_batch=False, convert=to_coreml, quantize=quantize_coreml,
                  int8_from="file", int8_calibrates=False,
                  session=CoreMLSession, runs_here=runs_here, inspect=inspect_coreml)
