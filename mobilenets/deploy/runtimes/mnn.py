"""MNN: Alibaba's mobile inference engine (``pip install MNN``), files ``model.mnn``.

``export --format mnn`` writes the inference module as ONNX (TorchScript exporter, a scratch file) and converts it
with MNN's converter; int8 is MNN's post-training quantization tool on the fp32 file (KL activation ranges, per-channel
weights), calibrated on the exact preprocessed arrays. Both tools run in a child Python process through MNN's ``_tools``
extension: the quantizer can crash its process, and MNN's ``MNN.tools`` wrappers pip-install a logging SDK and send
usage logs when imported. Sessions run MNN's Interpreter (CPU, fp32 arithmetic for the float parts) at the file's batch.
"""
from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ...core.errors import UsageError
from ..common import DEFAULT_OPSET, NO_STEPS, ExportError, Steps, first_line, quiet
from ..graph import exact_gelu
from .base import Runtime, Session, load_error

ONNX_OPSET = 17  # the scratch ONNX file's opset (the TorchScript exporter; MNN's ONNX importer reads it)

# MNN's quantization tool (quantized.out) settings: its defaults, written out. KL-divergence activation ranges
# (per tensor, symmetric int8), max-abs per-output-channel weights; "sequence" input reads our arrays as text.
QUANT_CONFIG = {"feature_quantize_method": "KL", "weight_quantize_method": "MAX_ABS", "feature_clamp_value": 127,
                "weight_clamp_value": 127, "quant_bits": 8, "input_type": "sequence"}

# (HintMode.WINOGRAD_MEMORY_LEVEL, level) of the sessions: at its default level, 3, MNN picks its largest Winograd
# tiles for stride-1 3x3 convolutions, which lose fp32 precision (5e-4 relative on DeepLabV3's head at 520 px, beyond
# the export's 1e-4); level 1 keeps them within 1e-5 at the same speed.
WINOGRAD_HINT = (3, 1)

# What runs a tool of MNN's ``_tools`` extension in the child: argv is (tool, its arguments...), as its command
# line. (MNN 3.6.1's own ``mnnquant`` script passes them as three strings, which crashes the tool.)
_CHILD = "import sys, _tools; getattr(_tools, sys.argv[1])(sys.argv[1:])"


def to_mnn(module: nn.Module, example: torch.Tensor, path: Path, *, dynamic: bool = False, opset: int = DEFAULT_OPSET,
           verbose: bool = False, steps: Steps = NO_STEPS, outputs: Sequence[str] = ("logits",)) -> None:
    """Write ``path`` (.mnn, fp32 weights): ONNX in a scratch folder, then MNN's converter; the outputs named
    ``outputs``. ``opset`` does not apply (the ONNX file is only the converter's input). ``dynamic`` exports a
    dynamic ONNX batch, which MNN stores as 1: an MNN file declares one batch (``example``'s), and sessions
    run at it."""
    RUNTIME.require()
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="mobilenets-mnn-") as tmp:
        work = Path(tmp)
        onnx_file, out = work / "model.onnx", work / "model.mnn"
        with steps("trace"), quiet():
            axes = {"dynamic_axes": {n: {0: "batch"} for n in ["input", *outputs]}} if dynamic else {}
            try:
                with torch.no_grad():
                    torch.onnx.export(exact_gelu(copy.deepcopy(module)).eval(), (example,), str(onnx_file),
                                      opset_version=ONNX_OPSET,
                                      dynamo=False, input_names=["input"], output_names=list(outputs),
                                      verbose=verbose, **axes)
            except Exception as exc:  # noqa: BLE001 - surface the exporter's first line
                raise ExportError(f"torch.onnx export failed: {first_line(exc)}") from exc
            _run_tool("mnnconvert", ["-f", "ONNX", "--modelFile", str(onnx_file), "--MNNModel", str(out),
                                     "--bizCode", "mobilenets"], out, work, "MNN conversion failed")
        with steps("write"):
            shutil.move(str(out), str(path))


def quantize_mnn(src, dst, calib: np.ndarray, *, module: nn.Module | None = None, example: torch.Tensor | None = None,
                 **_) -> Path:
    """int8 ``dst`` from the fp32 ``src`` with MNN's quantization tool (``QUANT_CONFIG``), calibrated on ``calib``
    (N x C x H x W float32, already preprocessed) fed as it is, so no mean/std is needed: one text file per batch
    of the file's batch size (about 1.8 MB an image at 224 x 224, in a scratch folder; a remainder smaller than
    the batch is left out). ``module``, ``example`` and other options are not used."""
    RUNTIME.require()
    src, dst = Path(src), Path(dst)
    calib = np.asarray(calib, dtype=np.float32)
    try:
        with quiet():
            name, shape = _input_of(src)
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"MNN int8 quantization failed: cannot read {src.name}: {_why(exc)}") from None
    if calib.ndim != 4 or (len(shape) == 4 and tuple(calib.shape[1:]) != tuple(shape[1:])):
        raise UsageError(f"calibration images of shape {calib.shape[1:]} for an MNN file taking {tuple(shape)}")
    batch = max(int(shape[0]), 1) if shape else 1
    if len(calib) < batch:
        raise UsageError(f"{len(calib)} calibration images for a model with a fixed batch of {batch}")
    with tempfile.TemporaryDirectory(prefix="mobilenets-mnnquant-") as tmp:
        work = Path(tmp)
        data, config, out = work / "calib", work / "quant.json", work / "model.mnn"
        data.mkdir()
        for i in range(len(calib) // batch):
            sample = data / f"{i:06d}"
            sample.mkdir()
            chunk = np.ascontiguousarray(calib[i * batch:(i + 1) * batch])
            (sample / "input.json").write_text(json.dumps({"inputs": [{"name": name, "shape": list(chunk.shape)}]}))
            chunk.tofile(sample / f"{name}.txt", sep=" ", format="%.9g")  # 9 digits: float32 read back exactly
        config.write_text(json.dumps({**QUANT_CONFIG, "path": str(data)}))
        with quiet():
            _run_tool("mnnquant", [str(src), str(out), str(config)], out, work, "MNN int8 quantization failed")
        shutil.move(str(out), str(dst))
    return dst


def _run_tool(tool: str, args: list[str], out: Path, cwd: Path, what: str) -> None:
    """Run MNN's ``tool`` ("mnnconvert", "mnnquant") in a child process; an ``ExportError`` when it
    fails, crashes or writes no ``out`` (its status is always "done")."""
    try:
        done = subprocess.run([sys.executable, "-c", _CHILD, tool, *args], cwd=cwd, capture_output=True, text=True,
                              errors="replace", check=False)
    except OSError as exc:
        raise ExportError(f"{what}: {first_line(exc)}") from None
    if done.returncode != 0 or not out.is_file() or out.stat().st_size == 0:
        raise ExportError(f"{what}: {_tool_error(done)}")


_NOISE = re.compile(r"^(\[\d\d:\d\d:\d\d\]\s*[@:]?\s*\d*:\s*|\[?(ERROR|WARNING)\]?:?\s*)+", re.IGNORECASE)
_ERROR = re.compile(r"error|not support|fail|not exist|invalid|can't|cannot|what\(\)", re.IGNORECASE)


def _tool_error(done: subprocess.CompletedProcess) -> str:
    """What an MNN tool's output says went wrong: its first error line (else its last line), and how it exited."""
    lines = [_NOISE.sub("", s).strip() for s in f"{done.stdout}\n{done.stderr}".splitlines()]
    lines = [s for s in lines if s and not s.startswith("The device supports")]
    errors = [s for s in lines if _ERROR.search(s)]
    why = (errors[0] if errors else lines[-1] if lines else "no output file")[:300]
    if done.returncode < 0:
        return f"{why} (crashed with signal {-done.returncode})"
    return f"{why} (exit status {done.returncode})" if done.returncode else why


def _input_of(path: Path) -> tuple[str, list[int]]:
    """The name and declared shape of an MNN file's single input."""
    interpreter = _interpreter(path)
    session = interpreter.createSession({"backend": "CPU", "numThread": 1})
    inputs = interpreter.getSessionInputAll(session)
    if len(inputs) != 1:
        raise ValueError(f"expected one input, found {len(inputs)}: {', '.join(inputs)}")
    name, tensor = next(iter(inputs.items()))
    return name, [int(d) for d in tensor.getShape()]


def _interpreter(path: Path):
    import MNN
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError("no such file")
    return MNN.Interpreter(str(path))


def _why(exc: BaseException) -> str:
    text = first_line(exc)
    return "not an MNN model file" if "createFromFile failed" in text else text


class MNNSession(Session):
    """An ``.mnn`` file in MNN's Interpreter: one CPU session of ``threads`` threads at fp32 ("high")
    precision, with Winograd tiles that keep it (``WINOGRAD_HINT``), run at the file's batch (the base
    class chunks other batches). An int8 file runs its float parts in fp32 too. (Not MNN's Module
    API: in MNN 3.6.1 it returns wrong logits, different from call to call, on int8 files.)"""

    backend = "mnn"

    def __init__(self, path, *, threads: int = 1, precision: str = "fp32", meta=None):
        mnn = RUNTIME.require()
        super().__init__(path=Path(path), threads=threads, precision=precision, meta=meta)
        if precision not in RUNTIME.precisions:
            raise UsageError(f"mnn runs {', '.join(RUNTIME.precisions)} files, not {precision}")
        try:
            with quiet():  # MNN prints its CPU features, precision and load errors
                interpreter = _interpreter(self.path)
                interpreter.setSessionHint(*WINOGRAD_HINT)
                session = interpreter.createSession({"backend": "CPU", "precision": "high", "numThread": threads})
                inputs, outputs = interpreter.getSessionInputAll(session), interpreter.getSessionOutputAll(session)
                if len(inputs) != 1 or not outputs:
                    raise ValueError(f"expected one input and some output, found {list(inputs)} and {list(outputs)}")
                inp = next(iter(inputs.values()))
                shape = [int(d) for d in inp.getShape()]
                # (output tensor, host tensor of its shape in plain NCHW) by output, in the export's order
                pairs = []
                for name in self._name_outputs(list(outputs)):
                    out_shape = tuple(int(d) for d in outputs[name].getShape())
                    pairs.append((outputs[name], mnn.Tensor(out_shape, mnn.Halide_Type_Float,
                                                            np.zeros(out_shape, np.float32),
                                                            mnn.Tensor_DimensionType_Caffe)))
        except Exception as exc:  # noqa: BLE001 - any failure to load is the one-line load error
            raise load_error("mnn", self.path, ValueError(_why(exc))) from None
        self._interpreter, self._session, self._input, self._outputs = interpreter, session, inp, pairs
        self._tensor = mnn.Tensor
        self._float, self._plain = mnn.Halide_Type_Float, mnn.Tensor_DimensionType_Caffe
        self._declare_input(shape, fixed_batch=True)

    def _run_all(self, x: np.ndarray) -> list[np.ndarray]:
        # the session's input is in MNN's own packed layout (NC4HW4): copyFrom converts from plain NCHW
        self._input.copyFrom(self._tensor(x.shape, self._float, x, self._plain))
        self._interpreter.runSession(self._session)
        outs = []
        for out, host in self._outputs:
            out.copyToHostTensor(host)
            outs.append(np.array(host.getNumpyData(), dtype=np.float32))  # a copy: the host tensor is reused
        return outs


RUNTIME = Runtime(backend="mnn", module="MNN", package="MNN", dist="MNN", format="mnn", suffix=".mnn",
                  precisions=("fp32", "int8"), export_precisions=("fp32", "int8"), dynamic_batch=False,
                  convert=to_mnn, converter=(("onnx", "onnx"),), quantize=quantize_mnn, int8_from="file",
                  session=MNNSession)
