"""int8 post-training static quantization per runtime, and the fp32-vs-int8 report.

* ONNX Runtime: QDQ format, per-channel int8 weights, uint8 activations, MinMax calibration
  (``quantize_onnx``; why it stays the standard recipe for MobileNetV3: see its docstring).
* OpenVINO: NNCF's ``nncf.quantize`` on the IR (``quantize_openvino``).
* TFLite: PT2E with LiteRT's quantizer, then litert-torch's converter (``quantize_tflite``).

When PTQ loses too much, quantization-aware fine-tuning (``qat.py``, ``export(..., qat_epochs=N)``)
trains the model against simulated int8, as the TF-slim seed trains quantized from a float checkpoint.
Every quantizer runs inside ``common.quiet``: their progress bars and log lines stay out of our output.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..core.errors import UsageError
from .common import quiet
from .runtimes import interleaved_latency, open_session

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


def to_layout(images: np.ndarray, nhwc: bool) -> np.ndarray:
    return np.ascontiguousarray(images.transpose(0, 2, 3, 1)) if nhwc else images


def quantize_file(fmt: str, src: Path, dst: Path, calib: np.ndarray, *, nhwc: bool = False,
                  module=None, example=None, int8_format: str = "qdq") -> Path:
    """Quantize the fp32 export ``src`` into ``dst`` with calibration images ``calib`` (NCHW);
    ``int8_format``: ONNX Runtime's "qdq" or "qoperator" form."""
    if fmt == "onnx":
        return quantize_onnx(src, dst, to_layout(calib, nhwc), int8_format=int8_format)
    if fmt == "openvino":
        return quantize_openvino(src, dst, to_layout(calib, nhwc))
    if fmt == "tflite":
        return quantize_tflite(module, example, dst, to_layout(calib, nhwc))
    raise UsageError(f"no int8 path for {fmt}")


# ------------------------------------------------------------------------------------------
# ONNX Runtime


def quantize_onnx(src: str | os.PathLike, dst: str | os.PathLike, calib: np.ndarray, *, int8_format: str = "qdq",
                  per_channel: bool = True, nodes_to_exclude: list[str] | None = None) -> Path:
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


# ------------------------------------------------------------------------------------------
# OpenVINO


def openvino_batches(model, *arrays: np.ndarray) -> list:
    """``arrays`` cut into the batches an OpenVINO model takes (1 for a dynamic batch), a partial last
    batch dropped; one array gives its batches, several give tuples of them."""
    shape = model.inputs[0].get_partial_shape()
    b = shape[0].get_length() if shape[0].is_static else 1
    cuts = [tuple(a[i:i + b] for a in arrays) for i in range(0, len(arrays[0]) - b + 1, b)]
    return [c[0] for c in cuts] if len(arrays) == 1 else cuts


def quantize_openvino(src: str | os.PathLike, dst: str | os.PathLike, calib: np.ndarray) -> Path:
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


# ------------------------------------------------------------------------------------------
# TFLite


def quantize_tflite(module, example, dst: str | os.PathLike, calib: np.ndarray, *,
                    exclude: list[str] | tuple[str, ...] = ()) -> Path:
    """Full-integer-weights static quantization with PT2E and LiteRT's quantizer (float I/O);
    the layers of ``module`` named in ``exclude`` stay in float."""
    with quiet():
        import litert_torch
        from litert_torch.quantize import pt2e_quantizer
        from litert_torch.quantize.quant_config import QuantConfig
        from torchao.quantization.pt2e import quantize_pt2e

    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
    with quiet():
        m = torch.export.export(module, (example,)).module()
        m = quantize_pt2e.prepare_pt2e(m, _excluding(quantizer, set(exclude)) if exclude else quantizer)
        b = example.shape[0]
        with torch.no_grad():
            for i in range(0, len(calib) - b + 1, b):
                m(torch.from_numpy(calib[i:i + b]))
        m = quantize_pt2e.convert_pt2e(m, fold_quantize=False)
        edge = litert_torch.convert(m, (example,), quant_config=QuantConfig(pt2e_quantizer=quantizer))
        edge.export(str(dst))
    return Path(dst)


def _excluding(quantizer, names: set[str]):
    """``quantizer`` with no annotation on the nodes of the modules ``names``: they run in float."""
    from torchao.quantization.pt2e.quantizer import Quantizer

    class Excluding(Quantizer):
        def transform_for_annotation(self, model):
            return quantizer.transform_for_annotation(model)

        def annotate(self, model):
            quantizer.annotate(model)
            blocks = {n.rsplit(".", 1)[0] for n in names}  # a conv's block: the conv and its activation
            # and the block that computes its input, whose output would stay quantized otherwise
            feeds = [node.args[0] for node in model.graph.nodes if _module_of(node) in names and node.args
                     and isinstance(node.args[0], torch.fx.Node)]
            blocks |= {_module_of(f).rsplit(".", 1)[0] for f in feeds if _module_of(f)}
            stripped = {node for node in model.graph.nodes
                        if _module_of(node) in names or _module_of(node).rsplit(".", 1)[0] in blocks} | set(feeds)
            while True:  # and every annotation that shares a quantizer with a stripped node
                shared = {node for node in model.graph.nodes if node not in stripped
                          and _shares_with(node.meta.get("quantization_annotation"), stripped)}
                if not shared:
                    break
                stripped |= shared
            for node in stripped:
                node.meta.pop("quantization_annotation", None)
            return model

        def validate(self, model):
            quantizer.validate(model)

    return Excluding()


def _module_of(node) -> str:
    """The innermost module a traced node belongs to ("" when none)."""
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


def _shares_with(annotation, nodes: set) -> bool:
    """Whether a PT2E annotation derives its quantizer from one of ``nodes`` (a shared spec)."""
    if annotation is None:
        return False
    for spec in (*annotation.input_qspec_map.values(), annotation.output_qspec):
        edge = getattr(spec, "edge_or_node", None)  # a node, or an (input node, user node) edge
        if edge is not None and any(n in nodes for n in (edge if isinstance(edge, tuple) else (edge,))):
            return True
    return False


# ------------------------------------------------------------------------------------------
# report


def compare(fp32: str | os.PathLike, int8: str | os.PathLike, backend: str, data, *, threads: int = 1,
            rounds: int = 10, per_round: int = 5) -> dict:
    """File sizes, top-1 of fp32 vs int8 (labelled ``data``) or their agreement, and latency of both
    on ``backend`` (batch 1, ``threads``, interleaved rounds)."""
    fp32, int8 = Path(fp32), Path(int8)
    s32 = open_session(fp32, backend, threads=threads, precision="fp32")
    s8 = open_session(int8, backend, threads=threads, precision="int8")
    out: dict = {"backend": backend, "threads": threads,
                 "size_bytes": {"fp32": file_size(fp32), "int8": file_size(int8)}}
    if data is not None:
        y32, y8 = s32.run(data.images), s8.run(data.images)
        out["images"] = int(len(data.images))
        out["top1_agreement"] = float((y32.argmax(1) == y8.argmax(1)).mean())
        if data.labels is not None:
            out["top1"] = {"fp32": float((y32.argmax(1) == data.labels).mean()),
                           "int8": float((y8.argmax(1) == data.labels).mean())}
        x = data.images[:1]
    else:
        side = s32.resolution or 224
        x = np.zeros((1, 3, side, side), np.float32)
    lat = interleaved_latency({"fp32": s32, "int8": s8}, x, warmup=5, rounds=rounds, per_round=per_round)
    out["latency_ms"] = lat
    out["speedup"] = lat["fp32"]["median_ms"] / lat["int8"]["median_ms"]
    return out


def file_size(path: Path) -> int:
    return path.stat().st_size + (path.with_suffix(".bin").stat().st_size if path.suffix == ".xml" else 0)
