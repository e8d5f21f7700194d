"""ncnn: Tencent's CPU inference library (``pip install ncnn``), files ``model.param`` + ``model.bin``.

``export --format ncnn`` traces the inference module with TorchScript and converts it with pnnx (``pip install
pnnx``) into fp32 weights; the ``.param`` gets its Input layer's shape, so a file without its sidecar still says
its resolution. A file takes one image (batch 1): the session runs a batch image by image, as fp32 or with ncnn's
fp16 / bf16 storage. No int8: ncnn's pip packages carry no quantization tool (ncnn2table + ncnn2int8).
"""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ...core.errors import UsageError
from ..common import NO_STEPS, ExportError, Steps, first_line, quiet
from .base import Runtime, Session, import_or_explain, load_error

INT8_NOTE = "ncnn's pip packages have no quantization tool: no ncnn2table or ncnn2int8"

# session precision -> (use_fp16_storage, use_bf16_storage); an int8 file (made with ncnn's own tools) keeps
# its float layers in fp32
_STORAGE = {"fp32": (False, False), "fp16": (True, False), "bf16": (False, True), "int8": (False, False)}


def to_ncnn(module: nn.Module, example: torch.Tensor, path: Path, *, dynamic: bool = False, opset: int = 0,
            verbose: bool = False, steps: Steps = NO_STEPS, outputs: Sequence[str] = ("logits",)) -> None:
    """Write ``path`` (.param) and its .bin (fp32 weights): TorchScript trace, then the pnnx converter in a
    scratch folder, of which only the two ncnn files are kept. ``dynamic`` and ``opset`` do not apply (an ncnn
    file takes one image; sessions run a batch image by image). pnnx names the outputs ``out0``, ``out1``...
    in the module's order; ``outputs`` (the sidecar's names for them) sets how many there must be."""
    ncnn = RUNTIME.require()
    pnnx = import_or_explain("pnnx", "pnnx", "ncnn export")
    path = Path(path)
    example = example[:1]  # ncnn has no batch dimension
    shape = tuple(int(d) for d in example.shape)
    with tempfile.TemporaryDirectory(prefix="mobilenets-pnnx-") as tmp:
        work = Path(tmp)
        param, weights = work / "model.ncnn.param", work / "model.ncnn.bin"
        with steps("trace"), quiet():
            try:
                with torch.no_grad():
                    traced = torch.jit.trace(module.eval(), example, check_trace=False)
                traced.save(str(work / "model.pt"))
                del traced
                _run_pnnx(pnnx.EXEC_PATH, work, shape, param, weights)
            except ExportError:
                raise
            except Exception as exc:  # noqa: BLE001 - surface the converter's first line
                raise ExportError(f"pnnx conversion failed: {first_line(exc)}") from exc
        with steps("write"):
            text = param.read_text()
            unknown = sorted({layer[0] for layer in _layers(text) if ncnn.layer_to_index(layer[0]) < 0})
            if unknown:
                raise ExportError(f"pnnx conversion failed: ncnn has no layer for {', '.join(unknown)}")
            blobs = {top for layer in _layers(text) for top in layer[2] if _index_of(top) is not None}
            if len(blobs) != len(outputs):
                raise ExportError(f"pnnx conversion gave {len(blobs)} outputs, the model has {len(outputs)}")
            path.write_text(_with_input_shape(text, shape))
            shutil.move(str(weights), str(path.with_suffix(".bin")))


def _run_pnnx(exe: str, work: Path, shape: tuple[int, ...], param: Path, weights: Path) -> None:
    """The pnnx command line on ``work/model.pt`` (pnnx's ``export()`` would ignore its exit status and
    message, then import the PyTorch model it generates)."""
    args = [exe, "model.pt", f"inputshape=[{','.join(map(str, shape))}]f32", "device=cpu",
            "fp16=0", f"ncnnparam={param.name}", f"ncnnbin={weights.name}"]
    done = subprocess.run(args, cwd=work, capture_output=True, text=True, errors="replace", check=False)
    if done.returncode != 0 or not param.is_file() or not weights.is_file():
        raise ExportError(f"pnnx conversion failed: {_pnnx_error(done)}")


_ERROR_LINE = re.compile(r"^\s*(\w+(Error|Exception)\b|what\(\):|error\b)", re.IGNORECASE)


def _pnnx_error(done: subprocess.CompletedProcess) -> str:
    """The line of pnnx's output that says what went wrong (its last error line, else its last line)."""
    lines = [s.strip() for s in f"{done.stdout}\n{done.stderr}".splitlines() if s.strip()]
    errors = [s for s in lines if _ERROR_LINE.match(s)]
    what = errors[-1] if errors else (lines[-1] if lines else "no output")
    return f"{what[:300]} (pnnx exit status {done.returncode})"


def _layers(text: str) -> list[tuple[str, list[str], list[str], dict[str, str]]]:
    """(type, bottoms, tops, params) of each layer of a text .param."""
    out = []
    for line in text.splitlines()[2:]:
        f = line.split()
        if len(f) < 4:
            continue
        nb, nt = int(f[2]), int(f[3])
        params = dict(p.split("=", 1) for p in f[4 + nb + nt:] if "=" in p)
        out.append((f[0], f[4:4 + nb], f[4 + nb:4 + nb + nt], params))
    return out


def _with_input_shape(text: str, shape: tuple[int, ...]) -> str:
    """The .param with its Input layer declaring ``w h c`` (as ncnn's own converters write it)."""
    if len(shape) != 4:
        return text
    _, c, h, w = shape
    lines = text.splitlines()
    for i, line in enumerate(lines[2:], start=2):
        f = line.split()
        if f and f[0] == "Input" and len(f) == 4 + int(f[2]) + int(f[3]):  # no parameters yet
            lines[i] = f"{line.rstrip()} 0={w} 1={h} 2={c}"
    return "\n".join(lines) + "\n"


def _index_of(blob: str) -> int | None:
    """k of pnnx's output blob ``out{k}``, else None."""
    match = re.fullmatch(r"out(\d+)", blob)
    return int(match.group(1)) if match else None


def read_param(path: Path) -> tuple[tuple[int, int, int] | None, str]:
    """(c, h, w) of the first Input layer of a text .param (None when it declares none) and its magic line."""
    text = Path(path).read_text(errors="replace")
    magic = text.split("\n", 1)[0].strip()
    for kind, _, _, params in _layers(text):
        if kind == "Input":
            try:
                w, h, c = (int(params.get(k, 0)) for k in ("0", "1", "2"))
            except ValueError:
                return None, magic
            return ((c, h, w) if w > 0 and h > 0 and c > 0 else None), magic
    return None, magic


class NcnnSession(Session):
    """An ncnn .param + .bin, run image by image (``threads`` ncnn threads, light mode). ``precision``: fp32,
    or ncnn's fp16 / bf16 storage of weights and activations."""

    backend = "ncnn"

    def __init__(self, path, *, threads: int = 1, precision: str = "fp32", meta=None):
        ncnn = RUNTIME.require()
        super().__init__(path=Path(path), threads=threads, precision=precision, meta=meta)
        if precision not in _STORAGE:
            raise UsageError(f"ncnn sessions run {', '.join(RUNTIME.precisions)}, not {precision}")
        fp16, bf16 = _STORAGE[precision]
        weights = self.path.with_suffix(".bin")
        net = ncnn.Net()
        opt = net.opt
        opt.num_threads = threads
        opt.lightmode = True
        opt.use_vulkan_compute = False
        opt.use_fp16_storage = opt.use_fp16_packed = opt.use_fp16_arithmetic = fp16
        opt.use_bf16_storage = opt.use_bf16_packed = bf16
        try:
            shape, magic = read_param(self.path)
            if magic != "7767517":
                raise ValueError(f"not a text ncnn .param (first line {magic[:40]!r})")
            if not weights.is_file():
                raise FileNotFoundError(f"no weights file {weights.name} beside it")
            with quiet():  # ncnn prints its parse errors
                if net.load_param(str(self.path)) != 0:
                    raise ValueError("ncnn could not parse the .param")
                if net.load_model(str(weights)) != 0:
                    raise ValueError(f"ncnn could not read {weights.name}")
            inputs, outputs = list(net.input_names()), list(net.output_names())
            if len(inputs) != 1 or not outputs:
                raise ValueError(f"expected one input and some output, found {inputs} and {outputs}")
        except Exception as exc:  # noqa: BLE001 - any failure to load is the one-line load error
            raise load_error("ncnn", self.path, exc) from None
        self._net, self._mat = net, ncnn.Mat
        # pnnx numbers the outputs in the module's order (out0, out1...); ncnn lists them as its layers come
        numbered = all(_index_of(n) is not None for n in outputs)
        self._outputs = self._name_outputs(sorted(outputs, key=_index_of) if numbered else outputs, by_position=True)
        self.input_name, self.output_name = inputs[0], self._outputs[0]
        self._declare_input((1, *(shape or (None, None, None))), fixed_batch=True)

    def _run_all(self, x: np.ndarray) -> list[np.ndarray]:
        """Each output with its batch dimension back (ncnn has none): 1 x classes, 1 x C x H x W."""
        ex = self._net.create_extractor()
        ex.input(self.input_name, self._mat(x[0]))  # shares x's memory, no copy
        outs = []
        for name in self._outputs:
            ret, out = ex.extract(name)
            if ret:
                raise UsageError(f"ncnn could not run {self.path.name} on input {x.shape} (error {ret})")
            outs.append(np.array(out)[None])
        return outs


RUNTIME = Runtime(backend="ncnn", module="ncnn", package="ncnn", dist="ncnn", format="ncnn", suffix=".param",
                  companions=(".bin",), precisions=("fp32", "fp16", "bf16"), export_precisions=("fp32",),
                  dynamic_batch=False, convert=to_ncnn, converter=(("pnnx", "pnnx"),), quantize=None,
                  int8_from="file", int8_note=INT8_NOTE, session=NcnnSession)
