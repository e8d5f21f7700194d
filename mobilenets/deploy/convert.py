"""Write a PyTorch module as an ONNX, OpenVINO IR or TFLite file: the converters, unverified.

Each converter takes the inference module (``graph.deploy_module``), an example input and the
destination, and reports two steps: ``trace`` (the module captured by the converter) and ``write``
(the file on disk). ``export`` verifies what they wrote; ``runtimes`` uses them to open a module
on another backend. A converter that fails is an ``ExportError`` with its first line.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..core.errors import UsageError
from .common import MIN_OPSET, NO_STEPS, ExportError, Steps, first_line, quiet
from .graph import reduce_mean_to_global_pool, strip_metadata


def check_opset(opset: int) -> None:
    if not isinstance(opset, int) or opset < MIN_OPSET:
        raise UsageError(f"opset {opset}: the export needs opset {MIN_OPSET} or newer")


def to_onnx(module: nn.Module, example: torch.Tensor, path: Path, *, dynamic: bool, opset: int,
            verbose: bool = False, steps: Steps = NO_STEPS) -> None:
    """torch.onnx (the torch.export-based exporter), then our ONNX-level clean-ups: global pools
    as ``GlobalAveragePool``, no exporter metadata, a batch dimension named ``batch`` when dynamic."""
    import onnx
    check_opset(opset)
    kwargs = {}
    if dynamic:
        kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1, max=4096)},)
    with steps("trace"), quiet():
        try:
            program = torch.onnx.export(module, (example,), None, opset_version=opset, dynamo=True,
                                        input_names=["input"], output_names=["logits"], verbose=verbose,
                                        report=False, **kwargs)
        except Exception as exc:  # noqa: BLE001 - surface the exporter's first line
            raise ExportError(f"torch.onnx export failed: {first_line(exc)}") from exc
    with steps("write"):
        proto = program.model_proto
        reduce_mean_to_global_pool(proto)
        strip_metadata(proto)
        if dynamic:
            for value in (proto.graph.input[0], proto.graph.output[0]):
                dim = value.type.tensor_type.shape.dim[0]
                dim.Clear()
                dim.dim_param = "batch"
        proto.producer_name = "mobilenets"
        onnx.checker.check_model(proto)
        onnx.save(proto, str(path))


def to_openvino(module: nn.Module, example: torch.Tensor, path: Path, *, dynamic: bool, opset: int = 0,
                verbose: bool = False, steps: Steps = NO_STEPS) -> None:
    """OpenVINO IR from the torch module (``openvino.convert_model``), fp32 weights."""
    import openvino as ov
    shape = list(example.shape)
    if dynamic:
        shape[0] = -1
    with steps("trace"), quiet():
        try:
            ovm = ov.convert_model(module, example_input=example, input=[ov.PartialShape(shape)])
        except Exception as exc:  # noqa: BLE001
            raise ExportError(f"openvino conversion failed: {first_line(exc)}") from exc
    with steps("write"), quiet():
        save_openvino(ovm, path)


def save_openvino(ovm, path: Path) -> None:
    """Name the IR's input and output as the ONNX files do and save it (.xml + .bin), fp32 weights."""
    import openvino as ov
    ovm.outputs[0].get_tensor().set_names({"logits"})
    ovm.inputs[0].get_tensor().set_names({"input"})
    ov.save_model(ovm, str(path), compress_to_fp16=False)


def onnx_to_openvino(src: Path, dst: Path, *, what: str = "model") -> None:
    """An OpenVINO IR read from an ONNX file (a QDQ graph becomes FakeQuantize, run as int8)."""
    import openvino as ov
    with quiet():
        try:
            ovm = ov.convert_model(str(src))
        except Exception as exc:  # noqa: BLE001
            raise ExportError(f"openvino conversion of the {what} failed: {first_line(exc)}") from exc
        save_openvino(ovm, dst)


def to_tflite(module: nn.Module, example: torch.Tensor, path: Path, *, dynamic: bool = False, opset: int = 0,
              verbose: bool = False, steps: Steps = NO_STEPS) -> None:
    """TFLite through LiteRT's PyTorch converter (litert-torch)."""
    litert_torch = require_litert_torch()
    with steps("trace"), quiet():
        try:
            edge = litert_torch.convert(module, (example,))
        except Exception as exc:  # noqa: BLE001
            raise ExportError(f"litert-torch conversion failed: {first_line(exc)}") from exc
    with steps("write"), quiet():
        try:
            edge.export(str(path))
        except Exception as exc:  # noqa: BLE001
            raise ExportError(f"litert-torch could not write {path.name}: {first_line(exc)}") from exc


CONVERTERS = {"onnx": to_onnx, "openvino": to_openvino, "tflite": to_tflite}


# ------------------------------------------------------------------------------------------
# optional packages, checked before any work


def require_litert_torch():
    """litert-torch, or a one-line ``UsageError`` saying what to install."""
    try:
        with quiet():  # it brings JAX and TensorFlow logging along
            import litert_torch
    except ImportError:
        raise UsageError("TFLite export needs LiteRT's PyTorch converter: pip install litert-torch ai-edge-litert") \
            from None
    return litert_torch


def require_torchao() -> None:
    try:
        import torchao.quantization.pt2e  # noqa: F401
    except ImportError:
        raise UsageError("quantization-aware fine-tuning needs torchao (PT2E): pip install torchao") from None


def require_quantizer(fmt: str) -> None:
    """The int8 tools of ``fmt``: NNCF for OpenVINO, onnxruntime's quantization for ONNX."""
    if fmt == "openvino":
        try:
            with quiet():  # NNCF logs an INFO line when imported
                import nncf  # noqa: F401
        except ImportError:
            raise UsageError("OpenVINO int8 needs NNCF: pip install nncf") from None
    elif fmt == "onnx":
        try:
            with quiet():
                import onnxruntime.quantization  # noqa: F401
        except ImportError:
            raise UsageError("ONNX int8 needs onnxruntime's quantization tools: pip install onnxruntime") from None


def require_onnx() -> None:
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise UsageError("ONNX export needs the onnx package: pip install onnx onnxscript") from None
