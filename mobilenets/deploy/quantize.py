"""int8 post-training static quantization, dispatched to each runtime's quantizer (``runtimes/<name>.py``:
ONNX Runtime's QDQ/QOperator, NNCF for OpenVINO, PT2E for LiteRT and ExecuTorch, MNN's tool...),
and the fp32-vs-int8 report.

When PTQ loses too much, quantization-aware fine-tuning (``qat.py``, ``export(..., qat_epochs=N)``)
trains the model against simulated int8, as the TF-slim seed trains quantized from a float checkpoint.
Every quantizer runs inside ``common.quiet``: their progress bars and log lines stay out of our output.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..core.errors import UsageError
from .runtimes import by_format, files_of, interleaved_latency, open_session

ONNX_FORMATS = {"qdq": "QDQ", "qoperator": "QOperator"}  # ours -> onnxruntime's QuantFormat


def to_layout(images: np.ndarray, nhwc: bool) -> np.ndarray:
    return np.ascontiguousarray(images.transpose(0, 2, 3, 1)) if nhwc else images


def quantize_file(fmt: str, src: Path, dst: Path, calib: np.ndarray, *, nhwc: bool = False,
                  module=None, example=None, **options) -> Path:
    """Quantize for ``fmt`` into ``dst`` with calibration images ``calib`` (NCHW), from the fp32 file
    ``src`` or from the inference ``module`` (as the runtime's ``int8_from`` says); ``options`` go to
    the runtime's quantizer (ONNX Runtime: ``int8_format`` "qdq" or "qoperator")."""
    runtime = by_format(fmt)
    if runtime.quantize is None:
        raise UsageError(f"no int8 path for {fmt}: {runtime.int8_note or 'its runtime has no quantizer'}")
    if runtime.int8_from == "module" and module is None:
        raise UsageError(f"{fmt} int8 is quantized from the torch module: pass module and example")
    images = to_layout(calib, nhwc) if calib is not None else None
    return runtime.quantize(src, dst, images, module=module, example=example, **options)


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
    """Bytes of an export: its file(s) beside it (an IR's .bin, ncnn's .bin), or a package folder's content."""
    return sum(f.stat().st_size for f in files_of(path))
