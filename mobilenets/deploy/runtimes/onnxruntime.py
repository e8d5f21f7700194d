"""ONNX Runtime: ``.onnx`` files written by ``torch.onnx`` (then cleaned up: global pools, no exporter
metadata), int8 as ORT's QDQ or QOperator form, run on the CPU provider, or on the CUDA and
TensorRT execution providers where ``onnxruntime-gpu`` is installed (``providers``).
"""
from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ...core.errors import UsageError
from ..common import MIN_OPSET, NO_STEPS, ExportError, Steps, first_line, quiet
from ..graph import reduce_mean_to_global_pool, strip_metadata
from .base import Runtime, Session, load_error

# device -> the execution providers a session asks for, in order (ORT falls back along the list)
PROVIDERS = {"cpu": ["CPUExecutionProvider"],
             "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
             "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]}


def providers(kind: str, available: list[str] | None = None) -> list[str]:
    """The providers of ``kind`` ("cpu", "cuda", "tensorrt"), checked against those ORT has
    (``available``: ``onnxruntime.get_available_providers()`` unless given, for tests): a
    one-line ``UsageError`` naming onnxruntime-gpu when the first one is missing."""
    if kind not in PROVIDERS:
        raise UsageError(f"unknown ONNX Runtime device {kind!r}; known: {', '.join(PROVIDERS)}")
    if available is None:
        available = RUNTIME.require().get_available_providers()
    wanted = PROVIDERS[kind]
    if wanted[0] not in available:
        raise UsageError(f"onnxruntime has no {wanted[0]} here (it has {', '.join(available)}): "
                         f"pip install onnxruntime-gpu on a machine with CUDA"
                         + (" and TensorRT" if kind == "tensorrt" else ""))
    return [p for p in wanted if p in available]


def check_opset(opset: int) -> None:
    if not isinstance(opset, int) or opset < MIN_OPSET:
        raise UsageError(f"opset {opset}: the export needs opset {MIN_OPSET} or newer")


def to_onnx(module: nn.Module, example: torch.Tensor, path: Path, *, dynamic: bool = False, opset: int = 18,
            verbose: bool = False, steps: Steps = NO_STEPS, outputs: Sequence[str] = ("logits",),
            dynamo: bool = True) -> None:
    """torch.onnx (the torch.export-based exporter; ``dynamo=False``: the TorchScript one, which
    traces what torch.export cannot, such as a detector's data-dependent post-processing), then our
    ONNX-level clean-ups: global pools as ``GlobalAveragePool``, no exporter metadata, a batch
    dimension named ``batch`` when dynamic. The input is named ``input``, the module's outputs
    ``outputs``, in order."""
    import onnx
    check_opset(opset)
    names = list(outputs)
    with steps("trace"), quiet():
        try:
            if dynamo:
                shapes = {"dynamic_shapes": ({0: torch.export.Dim("batch", min=1, max=4096)},)} if dynamic else {}
                proto = torch.onnx.export(module, (example,), None, opset_version=opset, dynamo=True,
                                          input_names=["input"], output_names=names, verbose=verbose,
                                          report=False, **shapes).model_proto
            else:
                axes = {"dynamic_axes": {n: {0: "batch"} for n in ["input", *names]}} if dynamic else {}
                buffer = io.BytesIO()
                with torch.no_grad():
                    torch.onnx.export(module, (example,), buffer, opset_version=opset, dynamo=False,
                                      input_names=["input"], output_names=names, verbose=verbose, **axes)
                proto = onnx.load_from_string(buffer.getvalue())
        except Exception as exc:  # noqa: BLE001 - surface the exporter's first line
            raise ExportError(f"torch.onnx export failed: {first_line(exc)}") from exc
    with steps("write"):
        reduce_mean_to_global_pool(proto)
        strip_metadata(proto)
        if dynamic:
            for value in (proto.graph.input[0], *proto.graph.output):
                dim = value.type.tensor_type.shape.dim[0]
                dim.Clear()
                dim.dim_param = "batch"
        proto.producer_name = "mobilenets"
        onnx.checker.check_model(proto)
        onnx.save(proto, str(path))


ONNX_FORMATS = {"qdq": "QDQ", "qoperator": "QOperator"}  # ours -> onnxruntime's QuantFormat


class _Reader:
    """onnxruntime CalibrationDataReader over an N x C x H x W array, in chunks of ``batch``."""

    def __init__(self, name: str, images: np.ndarray, batch: int):
        self.name, self.images, self.batch, self.i = name, images, batch, 0

    def get_next(self):
        if self.i >= len(self.images):
            return None
        x = self.images[self.i:self.i + self.batch]
        if len(x) < self.batch:
            return None
        self.i += self.batch
        return {self.name: np.ascontiguousarray(x, dtype=np.float32)}

    def rewind(self):
        self.i = 0


def quantize_onnx(src: str | os.PathLike, dst: str | os.PathLike, calib: np.ndarray, *, int8_format: str = "qdq",
                  per_channel: bool = True, nodes_to_exclude: list[str] | None = None, **_) -> Path:
    """Static QDQ quantization with ONNX Runtime's tools: per-channel symmetric int8 weights,
    asymmetric uint8 activations (U8S8, the pair ORT's x86 VNNI kernels run fastest), MinMax.

    This stays ORT's standard recipe on purpose: its CPU provider has no int8 hard-swish and keeps
    some layers in float whatever the recipe, and every float/int8 boundary costs layout reorders,
    so excluding or decomposing layers does not pay (``benchmarks/int8_speed.py`` measures it).
    OpenVINO, whose int8 convolutions take hard-swish as a fused post-op, is the runtime for
    int8 MobileNetV3.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if int8_format not in ONNX_FORMATS:
        raise UsageError(f"ONNX int8 format must be one of {', '.join(ONNX_FORMATS)}, got {int8_format!r}")
    src, dst = Path(src), Path(dst)
    model = onnx.load(str(src))
    inp = model.graph.input[0]
    dim0 = inp.type.tensor_type.shape.dim[0]
    batch = dim0.dim_value if dim0.HasField("dim_value") else min(len(calib), 16)
    if len(calib) < batch:
        raise UsageError(f"{len(calib)} calibration images for a model with a fixed batch of {batch}")
    extra = {"ActivationSymmetric": False, "WeightSymmetric": True}
    with quiet():
        quantize_static(str(src), str(dst), _Reader(inp.name, calib, batch),
                        quant_format=getattr(QuantFormat, ONNX_FORMATS[int8_format]),
                        per_channel=per_channel, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=nodes_to_exclude or [],
                        extra_options=extra)
    return dst



class OrtSession(Session):
    backend = "onnxruntime"

    def __init__(self, path: Path, *, profile: str | None = None, device: str | None = "cpu", **kw):
        ort = RUNTIME.require()
        super().__init__(path=Path(path), **kw)
        kind = "cpu" if device in (None, "cpu") else ("tensorrt" if self.backend == "tensorrt" else "cuda")
        if self.backend == "tensorrt" and kind == "cpu":
            raise UsageError("the tensorrt backend runs on a GPU: add --device cuda")
        self.device = "cpu" if kind == "cpu" else str(device)
        chosen = providers(kind)
        if self.precision not in ("fp32", "int8"):
            raise UsageError(f"onnxruntime runs fp32 or int8 models, not {self.precision}; bf16 runs on openvino "
                             f"or torch")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1")
        opts.add_session_config_entry("session.set_denormal_as_zero", "1")
        opts.log_severity_level = 3
        if profile:
            opts.enable_profiling = True
            opts.profile_file_prefix = profile
        try:
            self.sess = ort.InferenceSession(str(path), opts, providers=chosen)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
            raise load_error(self.backend, path, exc) from None
        inp = self.sess.get_inputs()[0]
        self.input_name = inp.name
        self._outputs = self._name_outputs([o.name for o in self.sess.get_outputs()])
        self.output_name = self._outputs[0]
        self._declare_input(inp.shape, fixed_batch=True)

    def _run_all(self, x: np.ndarray) -> list[np.ndarray]:
        return self.sess.run(self._outputs, {self.input_name: x})



def peer_onnx(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    """How users of ONNX Runtime export a model themselves: plain ``torch.onnx.export`` (TorchScript
    exporter, opset 17), no clean-ups."""
    with torch.no_grad(), quiet():
        torch.onnx.export(module, example, str(path), opset_version=17, dynamo=False, input_names=["input"],
                          output_names=["logits"])


class TensorRTSession(OrtSession):
    """ONNX Runtime with the TensorRT execution provider (CUDA, then CPU, for what TensorRT leaves)."""

    backend = "tensorrt"


RUNTIME = Runtime(backend="onnxruntime", module="onnxruntime", package="onnxruntime", format="onnx", suffix=".onnx",
                  devices=("cpu", "cuda"),
                  precisions=("fp32", "int8"), export_precisions=("fp32", "int8"), convert=to_onnx,
                  converter=(("onnx", "onnx"), ("onnxscript", "onnxscript")), quantize=quantize_onnx,
                  quantizer=(("onnxruntime.quantization", "onnxruntime"),),
                  int8_from="file", session=OrtSession, peer_convert=peer_onnx)
TENSORRT = Runtime(backend="tensorrt", module="onnxruntime", package="onnxruntime-gpu", opens=(".onnx",),
                   devices=("cuda",),
                   precisions=("fp32", "int8"), session=TensorRTSession,
                   runs_here=lambda: None if "TensorrtExecutionProvider" in _available() else
                   "ONNX Runtime's TensorRT provider is not installed here (onnxruntime-gpu with TensorRT)")


def _available() -> list[str]:
    try:
        import onnxruntime
        return onnxruntime.get_available_providers()
    except ImportError:
        return []
