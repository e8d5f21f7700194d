"""One ``Session`` over every runtime: load a file or a model, set threads, run a batch, get logits.

``open_session`` accepts what ``weights.resolve_model`` accepts: a model name, a checkpoint, a
training run directory, an exported file (``.onnx``: ONNX Runtime, ``.xml``: OpenVINO,
``.tflite``: LiteRT) or a module. ``run`` always takes N x C x H x W float32 and returns
N x classes float32 logits; a file exported with NHWC input gets its transpose here, and a file
exported for a fixed batch is run in chunks of that batch, so ``predict`` and ``eval`` need not
know how a file was exported. Preprocessing and class names come from the export's JSON sidecar
(or the checkpoint's metadata); a file without its sidecar still says its input shape, from
which the session takes its layout and resolution. A runtime that is not installed is a
``UsageError`` naming the pip package.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..core import timing as _latency
from ..core.errors import UsageError
from ..core.preprocessing import Preprocessing, default_preprocessing
from ..models.meta import CheckpointMeta
from ..models.network import MobileNet, unwrap
from ..weights.resolve import CHECKPOINT_SUFFIXES, EXPORT_SUFFIXES, resolve_model
from .common import DEFAULT_OPSET, FORMAT_OF_BACKEND, SUFFIX, quiet
from .convert import CONVERTERS, require_litert_torch, require_onnx
from .graph import deploy_module

BACKENDS = ("torch", "compile", "onnxruntime", "openvino", "litert")
PRECISIONS = ("fp32", "bf16", "int8")
# backend -> (module to import, pip package that provides it)
_PACKAGES = {"torch": ("torch", "torch"), "compile": ("torch", "torch"),
             "onnxruntime": ("onnxruntime", "onnxruntime"), "openvino": ("openvino", "openvino"),
             "litert": ("ai_edge_litert.interpreter", "ai-edge-litert")}
_DISTS = {"torch": "torch", "compile": "torch", "onnxruntime": "onnxruntime", "openvino": "openvino",
          "litert": "ai-edge-litert"}
SUFFIX_BACKEND = {".onnx": "onnxruntime", ".xml": "openvino", ".tflite": "litert", ".safetensors": "torch",
                  ".pth": "torch", ".pt": "torch", ".bin": "torch", ".ckpt": "torch"}


def available_backends() -> dict[str, str | None]:
    """backend -> installed version (None when its runtime cannot be imported)."""
    out: dict[str, str | None] = {}
    for backend in BACKENDS:
        module, _ = _PACKAGES[backend]
        try:
            importlib.import_module(module)
            out[backend] = importlib.metadata.version(_DISTS[backend])
        except Exception:  # noqa: BLE001 - a broken install is "not available" too
            out[backend] = None
    return out


def require(backend: str):
    """The runtime module of ``backend``, or a one-line ``UsageError`` saying what to pip install."""
    if backend not in _PACKAGES:
        raise UsageError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    module, package = _PACKAGES[backend]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UsageError(f"backend {backend!r} is not installed: pip install {package} ({exc})") from None


class Session:
    """Base of the runtime sessions. Subclasses implement ``_run`` on the runtime's own layout.

    ``meta``: the model's ``CheckpointMeta`` (an export's sidecar, a checkpoint's metadata) or a
    sidecar-like dict; ``self.meta`` keeps the sidecar's other fields (precision, input layout,
    batch...). ``input_shape``: the input shape the graph declares, in its own layout, ``None``
    for dynamic dimensions (``None`` altogether when unknown)."""

    backend: str = ""

    def __init__(self, *, threads: int = 1, precision: str = "fp32", meta: CheckpointMeta | dict | None = None,
                 path: Path | None = None):
        if threads < 1:
            raise UsageError(f"threads must be >= 1, got {threads}")
        if precision not in PRECISIONS:
            raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.threads, self.precision, self.path = threads, precision, path
        self.checkpoint_meta = _as_meta(meta)
        self.meta: dict = dict(self.checkpoint_meta.extra)
        self.input_layout: str = self.meta.get("input_layout", "NCHW")
        self.fixed_batch: int | None = None
        self.input_shape: tuple[int | None, ...] | None = None
        self.preprocessing: Preprocessing | None = self.checkpoint_meta.preprocessing
        self.class_names: list[str] | None = self.checkpoint_meta.class_names

    @property
    def resolution(self) -> int | None:
        """The input's side in pixels: the recorded preprocessing's, else the sidecar's, else the graph's."""
        if self.preprocessing is not None:
            return self.preprocessing.resolution
        if self.meta.get("resolution"):
            return int(self.meta["resolution"])
        shape = self.input_shape
        if shape is None or len(shape) != 4:
            return None
        return shape[1] if self.input_layout == "NHWC" else shape[2]

    def feed(self) -> Preprocessing:
        """How to preprocess images for this session: the recorded preprocessing, else the default
        (``core.preprocessing``) at ``resolution``, which a file without a sidecar takes from its graph."""
        if self.preprocessing is not None:
            return self.preprocessing
        if not self.resolution:
            raise UsageError(f"{self.path or self.backend}: no sidecar says its preprocessing and its graph "
                             f"declares no fixed input size")
        config = self.checkpoint_meta.config
        return default_preprocessing(int(self.resolution), cifar_stem=config.cifar_stem if config else 0)

    def _declare_input(self, shape, *, fixed_batch: bool) -> None:
        """Record the graph's input shape (and its batch when fixed); a file exported without a
        sidecar that takes ``N x H x W x C`` (last dimension 1 or 3, second not) is run as NHWC."""
        dims = tuple(int(d) if isinstance(d, (int, np.integer)) and int(d) > 0 else None for d in shape)
        self.input_shape = dims
        self.fixed_batch = dims[0] if fixed_batch and dims else None
        if "input_layout" not in self.meta and len(dims) == 4 and dims[-1] in (1, 3) and dims[1] not in (1, 3):
            self.input_layout = "NHWC"

    def run(self, x: np.ndarray) -> np.ndarray:
        """N x C x H x W float32 -> N x classes float32 logits."""
        x = np.asarray(x)
        if x.ndim != 4:
            raise UsageError(f"{self.backend} session expects N x C x H x W input, got shape {x.shape}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.input_layout == "NHWC":
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        b = self.fixed_batch
        if b is None or len(x) == b:
            return np.asarray(self._run(x), dtype=np.float32)
        outs = []
        for i in range(0, len(x), b):
            chunk = x[i:i + b]
            n = len(chunk)
            if n < b:  # pad the last chunk to the exported batch
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], b - n, axis=0)])
            outs.append(np.asarray(self._run(chunk), dtype=np.float32)[:n])
        return np.concatenate(outs)

    __call__ = run

    def runner(self, x: np.ndarray):
        """A zero-argument callable that runs ``x`` (N x C x H x W), converted once to the file's own
        layout: what latency loops time, without the per-call conversion of ``run``."""
        native = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
        if self.input_layout == "NHWC":
            native = np.ascontiguousarray(native.transpose(0, 2, 3, 1))
        if self.fixed_batch is not None and len(native) != self.fixed_batch:
            return lambda: self.run(x)
        run = self._run
        return lambda: run(native)

    def _mark(self, precision: str) -> Session:
        """Record the model's precision (an int8 file runs with the runtime's fp32 setting for its float parts)."""
        self.precision = precision
        return self

    def _run(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        what = self.path.name if self.path else "module"
        return f"{type(self).__name__}({what}, threads={self.threads}, precision={self.precision})"


def _as_meta(meta: CheckpointMeta | dict | None) -> CheckpointMeta:
    """A ``CheckpointMeta`` from a sidecar-like dict (``preprocessing`` and ``class_names`` parsed,
    every other field kept in ``extra``)."""
    if isinstance(meta, CheckpointMeta):
        return meta
    meta = dict(meta or {})
    pre = meta.pop("preprocessing", None)
    names = meta.pop("class_names", None)
    return CheckpointMeta(meta.pop("model", None), None, Preprocessing.from_dict(pre) if isinstance(pre, dict)
                          else None, list(names) if names else None, meta)


class TorchSession(Session):
    """PyTorch eager, or ``torch.compile`` (backend "compile"); bf16 through CPU autocast."""

    def __init__(self, model, *, compile: bool = False, **kw):
        super().__init__(**kw)
        if self.precision == "int8":
            raise UsageError("the torch backend runs fp32 or bf16; int8 runs on onnxruntime, openvino or litert")
        self.backend = "compile" if compile else "torch"
        torch.set_num_threads(self.threads)
        self.model = model.eval()
        self._fn = torch.compile(self.model) if compile else self.model
        config = getattr(unwrap(model), "config", None)
        if config is not None:
            self.input_shape = (None, config.in_chans, config.resolution, config.resolution)

    def _run(self, x: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=self.precision == "bf16"):
            return self._fn(torch.from_numpy(x)).float().numpy()


class OrtSession(Session):
    backend = "onnxruntime"

    def __init__(self, path: Path, *, profile: str | None = None, **kw):
        ort = require("onnxruntime")
        super().__init__(path=path, **kw)
        if self.precision == "bf16":
            raise UsageError("onnxruntime's CPU provider runs fp32 or int8 models; bf16 runs on openvino or torch")
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
            self.sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
            raise UsageError(f"onnxruntime cannot load {path}: {str(exc).splitlines()[0][:300]}") from None
        inp = self.sess.get_inputs()[0]
        self.input_name = inp.name
        self.output_name = self.sess.get_outputs()[0].name
        self._declare_input(inp.shape, fixed_batch=True)

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.sess.run([self.output_name], {self.input_name: x})[0]


class OpenVINOSession(Session):
    backend = "openvino"

    def __init__(self, path: Path, **kw):
        ov = require("openvino")
        super().__init__(path=path, **kw)
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
            raise UsageError(f"openvino cannot load {path}: {str(exc).splitlines()[0][:300]}") from None
        self.request = self.compiled.create_infer_request()
        shape = self.compiled.input(0).get_partial_shape()
        self._declare_input([d.get_length() if d.is_static else None for d in shape], fixed_batch=True)

    def _run(self, x: np.ndarray) -> np.ndarray:
        return np.array(self.request.infer({0: x})[0], copy=True)


class LiteRTSession(Session):
    backend = "litert"

    def __init__(self, path: Path, **kw):
        interp_mod = require("litert")
        super().__init__(path=path, **kw)
        try:
            with quiet():  # the delegate's "INFO: Created TensorFlow Lite XNNPACK delegate" line
                self.interp = interp_mod.Interpreter(model_path=str(path), num_threads=self.threads)
                self.interp.allocate_tensors()
        except Exception as exc:  # noqa: BLE001
            raise UsageError(f"litert cannot load {path}: {str(exc).splitlines()[0][:300]}") from None
        self.inp = self.interp.get_input_details()[0]
        self.out = self.interp.get_output_details()[0]
        self._declare_input(list(self.inp["shape"]), fixed_batch=True)

    def _run(self, x: np.ndarray) -> np.ndarray:
        x = self._quant(x, self.inp)
        self.interp.set_tensor(self.inp["index"], x)
        self.interp.invoke()
        y = self.interp.get_tensor(self.out["index"])
        scale, zero = self.out.get("quantization", (0.0, 0))
        if y.dtype != np.float32 and scale:
            y = (y.astype(np.float32) - zero) * scale
        return y

    @staticmethod
    def _quant(x: np.ndarray, detail: dict) -> np.ndarray:
        if detail["dtype"] == np.float32:
            return x
        scale, zero = detail.get("quantization", (0.0, 0))
        info = np.iinfo(detail["dtype"])
        return np.clip(np.round(x / scale + zero), info.min, info.max).astype(detail["dtype"])


def open_session(target, backend: str | None = None, *, threads: int = 1, precision: str | None = None,
                 weights: str | None = None) -> Session:
    """A ``Session`` on ``target``: what ``weights.resolve_model`` accepts (a module, a model name
    with optional ``weights``, a checkpoint, a run directory, an exported file).

    ``backend`` defaults to the one an exported file's suffix names, else "torch"; a model given
    with another backend is converted for it first (fp32, into a temporary directory, unverified).
    ``precision`` defaults to what the export's sidecar records ("fp32" otherwise); "bf16" is a
    runtime setting (OpenVINO, torch).
    """
    if backend is not None and backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    if isinstance(target, nn.Module) and not isinstance(unwrap(target), MobileNet):
        # any other module (a peer implementation) runs in PyTorch as it is
        if (backend or "torch") not in ("torch", "compile"):
            raise UsageError(f"only mobilenets models are converted for {backend}; "
                             f"export {type(unwrap(target)).__name__} yourself and open the file")
        return TorchSession(target, compile=backend == "compile", threads=threads, precision=precision or "fp32")
    if isinstance(target, (str, os.PathLike)):
        _check_suffix(Path(target))
    resolved = resolve_model(target, weights, pretrained=True)
    if not resolved.is_export:
        backend = backend or "torch"
        precision = precision or "fp32"
        if backend in ("torch", "compile"):
            return TorchSession(resolved.model, compile=backend == "compile", threads=threads, precision=precision,
                                meta=resolved.meta, path=resolved.path)
        return _session_for_module(resolved.model, resolved.meta, backend, threads=threads, precision=precision)
    path = resolved.path
    backend = backend or SUFFIX_BACKEND[path.suffix.lower()]
    if backend in ("torch", "compile"):
        raise UsageError(f"the {backend} backend runs checkpoints (.safetensors, .pth), not {path.suffix} files")
    stored = resolved.meta.extra.get("precision", "fp32")
    precision = precision or ("fp32" if stored not in PRECISIONS else stored)
    return _file_session(path, backend, threads=threads, precision=precision, meta=resolved.meta)


def _check_suffix(path: Path) -> None:
    suffix = path.suffix.lower()
    if path.is_file() and suffix not in EXPORT_SUFFIXES | CHECKPOINT_SUFFIXES:
        raise UsageError(f"cannot tell the runtime of {path.name} from its suffix: exported files end in "
                         f"{', '.join(sorted(EXPORT_SUFFIXES))}, checkpoints in .safetensors or .pth")


def _file_session(path: Path, backend: str, *, threads: int, precision: str, meta: CheckpointMeta) -> Session:
    """The session of ``backend`` on the exported file ``path``."""
    kw = dict(threads=threads, meta=meta)
    suffix = path.suffix.lower()
    if backend == "onnxruntime":
        if suffix != ".onnx":
            raise UsageError(f"onnxruntime runs .onnx files, not {path.name}")
        return OrtSession(path, precision="fp32" if precision == "int8" else precision, **kw)._mark(precision)
    if backend == "openvino":
        if suffix not in (".xml", ".onnx"):
            raise UsageError(f"openvino runs .xml (IR) or .onnx files, not {path.name}")
        run_precision = "bf16" if precision == "bf16" else "fp32"
        return OpenVINOSession(path, precision=run_precision, **kw)._mark(precision)
    if backend == "litert":
        if suffix != ".tflite":
            raise UsageError(f"litert runs .tflite files, not {path.name}")
        return LiteRTSession(path, precision="fp32" if precision == "int8" else precision, **kw)._mark(precision)
    raise UsageError(f"backend {backend!r} cannot run {path.name}")


def _session_for_module(model: MobileNet, meta: CheckpointMeta, backend: str, *, threads: int,
                        precision: str) -> Session:
    """Convert ``model`` (fp32) to a temporary file for ``backend`` and open it (the runtime reads
    the file into memory; the file is gone when this returns)."""
    if precision == "int8":
        raise UsageError("an int8 session needs calibration: export with int8=True and calib=..., then open the file")
    if precision == "bf16" and backend != "openvino":
        raise UsageError(f"bf16 runs on openvino or torch, not {backend}")
    require(backend)
    fmt = FORMAT_OF_BACKEND[backend]
    if fmt == "onnx":
        require_onnx()
    elif fmt == "tflite":
        require_litert_torch()
    dynamic = fmt != "tflite"  # TFLite files have a fixed batch
    res, chans = model.config.resolution, model.config.in_chans
    example = torch.zeros((2 if dynamic else 1, chans, res, res))  # batch 1 would specialise a dynamic dim
    file_meta = CheckpointMeta(meta.variant, meta.config, meta.preprocessing, meta.class_names,
                               {"precision": precision, "input_layout": "NCHW", "resolution": res,
                                "batch": "dynamic" if dynamic else 1})
    with tempfile.TemporaryDirectory(prefix="mobilenets-session-") as tmp:
        path = Path(tmp) / f"model{SUFFIX[fmt]}"
        CONVERTERS[fmt](deploy_module(model), example, path, dynamic=dynamic, opset=DEFAULT_OPSET)
        session = _file_session(path, backend, threads=threads, precision=precision, meta=file_meta)
    session.path = None
    return session


def summarize(times_ms: list[float]) -> dict:
    """Median / p90 / min milliseconds and the run count (``core.timing.summarize`` as a dict)."""
    t = _latency.summarize(times_ms)
    return {"median_ms": t.median_ms, "p90_ms": t.p90_ms, "min_ms": t.min_ms, "runs": t.runs}


def interleaved_times(sessions: dict[str, Session], x: np.ndarray, *, warmup: int = 10, rounds: int = 20,
                      per_round: int = 10) -> dict[str, list[float]]:
    """Milliseconds of every ``run(x)`` of several sessions, ``per_round`` runs each in ``rounds``
    alternating rounds (``core.timing.interleaved_times``), so that the load of a shared
    machine hits them all alike."""
    runners = {k: (lambda s=s: s.run(x)) for k, s in sessions.items()}
    return _latency.interleaved_times(runners, warmup=warmup, iters=rounds * per_round, rounds=rounds)


def interleaved_latency(sessions: dict[str, Session], x: np.ndarray, *, warmup: int = 10, rounds: int = 20,
                        per_round: int = 10) -> dict[str, dict]:
    """Median / p90 / min latency of several sessions measured in alternating rounds."""
    times = interleaved_times(sessions, x, warmup=warmup, rounds=rounds, per_round=per_round)
    return {k: summarize(v) for k, v in times.items()}


def paired_ratio(times: dict[str, list[float]], slow: str, fast: str, per_round: int = 1) -> float:
    """Median over rounds of (round median of ``slow``) / (round median of ``fast``): the speed-up
    with each pair measured back to back, robust to load that comes and goes between rounds."""
    a, b = np.asarray(times[slow]), np.asarray(times[fast])
    n = len(a) // per_round
    ra = np.median(a[:n * per_round].reshape(n, per_round), axis=1)
    rb = np.median(b[:n * per_round].reshape(n, per_round), axis=1)
    return float(np.median(ra / rb))
