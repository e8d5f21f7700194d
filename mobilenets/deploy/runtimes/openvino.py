"""OpenVINO: an IR (``.xml`` + ``.bin``) converted straight from the torch module, int8 through NNCF,
run on its CPU plugin (fp32, int8, and bf16 as an inference hint where the CPU has native bf16).
It also runs ``.onnx`` files.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ...core.errors import UsageError
from ..common import NO_STEPS, ExportError, Steps, first_line, quiet
from .base import Runtime, Session, load_error


def to_openvino(module: nn.Module, example: torch.Tensor, path: Path, *, dynamic: bool, opset: int = 0,
                verbose: bool = False, steps: Steps = NO_STEPS, outputs: Sequence[str] = ("logits",)) -> None:
    """OpenVINO IR from the torch module (``openvino.convert_model``), fp32 weights; its outputs named
    ``outputs``, in order."""
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
        save_openvino(ovm, path, outputs)


def save_openvino(ovm, path: Path, outputs: Sequence[str] = ("logits",)) -> None:
    """Name the IR's input and outputs as the ONNX files do and save it (.xml + .bin), fp32 weights."""
    import openvino as ov
    if len(ovm.outputs) != len(outputs):
        raise ExportError(f"openvino conversion gave {len(ovm.outputs)} outputs, the model has {len(outputs)}")
    for port, name in zip(ovm.outputs, outputs, strict=True):
        port.get_tensor().set_names({name})
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


def openvino_batches(model, *arrays: np.ndarray) -> list:
    """``arrays`` cut into the batches an OpenVINO model takes (1 for a dynamic batch), a partial last
    batch dropped; one array gives its batches, several give tuples of them."""
    shape = model.inputs[0].get_partial_shape()
    b = shape[0].get_length() if shape[0].is_static else 1
    cuts = [tuple(a[i:i + b] for a in arrays) for i in range(0, len(arrays[0]) - b + 1, b)]
    return [c[0] for c in cuts] if len(arrays) == 1 else cuts


def quantize_openvino(src: str | os.PathLike, dst: str | os.PathLike, calib: np.ndarray, **_) -> Path:
    """NNCF post-training quantization of an IR (or ONNX file) into an int8 IR."""
    with quiet():
        import nncf
        import openvino as ov

    model = ov.Core().read_model(str(src))
    items = openvino_batches(model, calib)
    with quiet():
        qmodel = nncf.quantize(model, nncf.Dataset(items), subset_size=len(items),
                               preset=nncf.QuantizationPreset.PERFORMANCE)
        ov.save_model(qmodel, str(dst), compress_to_fp16=False)
    return Path(dst)


class OpenVINOSession(Session):
    backend = "openvino"

    def __init__(self, path: Path, **kw):
        ov = RUNTIME.require()
        super().__init__(path=Path(path), **kw)
        if self.precision not in ("fp32", "bf16", "int8"):
            raise UsageError(f"openvino runs fp32, bf16 or int8, not {self.precision}")
        core = ov.Core()
        hint = "bf16" if self.precision == "bf16" else "f32"
        if hint == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            raise UsageError("bf16 needs a CPU with bf16 support (AVX512_BF16 or AMX); this one has none")
        config = {"INFERENCE_NUM_THREADS": self.threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_PRECISION_HINT": hint}
        try:
            model = core.read_model(str(path))
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as exc:  # noqa: BLE001
            raise load_error("openvino", path, exc) from None
        self.request = self.compiled.create_infer_request()
        shape = self.compiled.input(0).get_partial_shape()
        self._declare_input([d.get_length() if d.is_static else None for d in shape], fixed_batch=True)
        ports = {self._label(i, out): out for i, out in enumerate(self.compiled.outputs)}
        self._ports = [ports[name] for name in self._name_outputs(list(ports))]

    def _label(self, i: int, port) -> str:
        """An output's name: the one of its tensor names the sidecar lists, else any of them."""
        names = port.get_names()
        listed = sorted(names & set(map(str, self.meta.get("outputs") or ())))
        return listed[0] if listed else (port.get_any_name() if names else f"output{i}")

    def _run_all(self, x: np.ndarray) -> list[np.ndarray]:
        result = self.request.infer({0: x})
        return [np.array(result[port], copy=True) for port in self._ports]


RUNTIME = Runtime(backend="openvino", module="openvino", package="openvino", format="openvino", suffix=".xml",
                  companions=(".bin",), opens=(".onnx",), precisions=("fp32", "bf16", "int8"),
                  export_precisions=("fp32", "bf16", "int8"), convert=to_openvino, quantizer=(("nncf", "nncf"),),
                  quantize=quantize_openvino, int8_from="file", session=OpenVINOSession)
