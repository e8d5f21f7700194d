"""One ``Session`` over every runtime: load a file or a model, set threads, run a batch, get logits.

``open_session("model.onnx")`` picks ONNX Runtime from the suffix (``.xml``: OpenVINO, ``.tflite``:
LiteRT, ``.safetensors``/``.pth``: PyTorch). ``run`` always takes N x C x H x W float32 and returns
N x classes float32 logits; a file exported with NHWC input gets its transpose here, and a file
exported for a fixed batch is run in chunks of that batch, so ``predict`` and ``eval`` need not know
how a file was exported. Preprocessing and class names come from the export's JSON sidecar (or the
checkpoint's metadata). A runtime that is not installed is a ``UsageError`` naming the pip package.
"""
from __future__ import annotations

import importlib
import importlib.metadata
from pathlib import Path

import numpy as np

from ..core.errors import UsageError
from ..core.preprocessing import Preprocessing
from ..measure import latency as _latency
from ..weights.resolve import read_sidecar

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
    """Base of the runtime sessions. Subclasses implement ``_run`` on the runtime's own layout."""

    backend: str = ""

    def __init__(self, *, threads: int = 1, precision: str = "fp32", meta: dict | None = None,
                 path: Path | None = None):
        if threads < 1:
            raise UsageError(f"threads must be >= 1, got {threads}")
        if precision not in PRECISIONS:
            raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.threads, self.precision, self.path = threads, precision, path
        self.meta = meta or {}
        self.input_layout: str = self.meta.get("input_layout", "NCHW")
        self.fixed_batch: int | None = None
        pre = self.meta.get("preprocessing")
        self.preprocessing: Preprocessing | None = Preprocessing.from_dict(pre) if pre else None
        self.class_names: list[str] | None = self.meta.get("class_names")

    @property
    def resolution(self) -> int | None:
        return self.preprocessing.resolution if self.preprocessing else self.meta.get("resolution")

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


class TorchSession(Session):
    """PyTorch eager, or ``torch.compile`` (backend "compile"); bf16 through CPU autocast."""

    def __init__(self, model, *, compile: bool = False, **kw):
        import torch
        super().__init__(**kw)
        if self.precision == "int8":
            raise UsageError("the torch backend runs fp32 or bf16; int8 runs on onnxruntime, openvino or litert")
        self.backend = "compile" if compile else "torch"
        torch.set_num_threads(self.threads)
        self.model = model.eval()
        self._fn = torch.compile(self.model) if compile else self.model

    def _run(self, x: np.ndarray) -> np.ndarray:
        import torch
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
        self.fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
        if "input_layout" not in self.meta and len(inp.shape) == 4 and inp.shape[-1] in (1, 3) \
                and inp.shape[1] not in (1, 3):
            self.input_layout = "NHWC"

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
        self.fixed_batch = shape[0].get_length() if shape[0].is_static else None

    def _run(self, x: np.ndarray) -> np.ndarray:
        return np.array(self.request.infer({0: x})[0], copy=True)


class LiteRTSession(Session):
    backend = "litert"

    def __init__(self, path: Path, **kw):
        interp_mod = require("litert")
        super().__init__(path=path, **kw)
        try:
            self.interp = interp_mod.Interpreter(model_path=str(path), num_threads=self.threads)
            self.interp.allocate_tensors()
        except Exception as exc:  # noqa: BLE001
            raise UsageError(f"litert cannot load {path}: {str(exc).splitlines()[0][:300]}") from None
        self.inp = self.interp.get_input_details()[0]
        self.out = self.interp.get_output_details()[0]
        shape = list(self.inp["shape"])
        self.fixed_batch = int(shape[0])
        if "input_layout" not in self.meta and len(shape) == 4 and shape[-1] in (1, 3) and shape[1] not in (1, 3):
            self.input_layout = "NHWC"

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


def open_session(target, backend: str | None = None, *, threads: int = 1, precision: str | None = None) -> Session:
    """A ``Session`` on ``target``: a MobileNet module, or a path (.onnx, .xml, .tflite, .safetensors...).

    ``backend`` defaults to the one the suffix names (a module: "torch"); a module given with another
    backend is exported for it first (fp32, into a temporary directory). ``precision`` defaults to
    what the export's sidecar records ("fp32" otherwise); "bf16" is a runtime setting (OpenVINO, torch).
    """
    from torch import nn

    if backend is not None and backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    if isinstance(target, nn.Module):
        backend = backend or "torch"
        precision = precision or "fp32"
        if backend in ("torch", "compile"):
            meta = _module_meta(target)
            return TorchSession(target, compile=backend == "compile", threads=threads, precision=precision, meta=meta)
        return _session_for_module(target, backend, threads=threads, precision=precision)
    path = Path(target)
    if not path.exists():
        raise UsageError(f"no such model file: {path}")
    inferred = SUFFIX_BACKEND.get(path.suffix.lower())
    backend = backend or inferred
    if backend is None:
        raise UsageError(f"cannot tell the runtime of {path.name} from its suffix; pass a backend "
                         f"({', '.join(BACKENDS)})")
    meta = read_sidecar(path)
    stored = meta.get("precision", "fp32")
    precision = precision or ("fp32" if stored not in PRECISIONS else stored)
    kw = dict(threads=threads, meta=meta)
    if backend in ("torch", "compile"):
        if inferred != "torch":
            raise UsageError(f"the {backend} backend runs checkpoints (.safetensors, .pth), not {path.suffix} files")
        require("torch")
        from ..weights.io import load_checkpoint
        model, _ = load_checkpoint(path)
        return TorchSession(model, compile=backend == "compile", threads=threads, precision=precision,
                            meta=_module_meta(model), path=path)
    if backend == "onnxruntime":
        if path.suffix.lower() != ".onnx":
            raise UsageError(f"onnxruntime runs .onnx files, not {path.name}")
        return OrtSession(path, precision="fp32" if precision == "int8" else precision, **kw)._mark(precision)
    if backend == "openvino":
        if path.suffix.lower() not in (".xml", ".onnx"):
            raise UsageError(f"openvino runs .xml (IR) or .onnx files, not {path.name}")
        run_precision = "bf16" if precision == "bf16" else "fp32"
        return OpenVINOSession(path, precision=run_precision, **kw)._mark(precision)
    if backend == "litert":
        if path.suffix.lower() != ".tflite":
            raise UsageError(f"litert runs .tflite files, not {path.name}")
        return LiteRTSession(path, precision="fp32" if precision == "int8" else precision, **kw)._mark(precision)
    raise UsageError(f"backend {backend!r} cannot run {path.name}")


def _module_meta(model) -> dict:
    from ..core.preprocessing import cifar, imagenet
    from ..weights.io import unwrap
    inner = unwrap(model)
    meta = getattr(inner, "checkpoint_meta", None)
    config = getattr(inner, "config", None)
    out: dict = {}
    pre = getattr(meta, "preprocessing", None)
    if pre is None and config is not None:
        pre = (cifar if config.cifar_stem else imagenet)(config.resolution)
    if pre is not None:
        out["preprocessing"] = pre.to_dict()
    if getattr(meta, "class_names", None):
        out["class_names"] = list(meta.class_names)
    return out


def _session_for_module(model, backend: str, *, threads: int, precision: str) -> Session:
    """Export ``model`` to a temporary file for ``backend`` and open it (the file is read into memory)."""
    import tempfile

    from .export import export
    fmt = {"onnxruntime": "onnx", "openvino": "openvino", "litert": "tflite"}[backend]
    if precision == "int8":
        raise UsageError("an int8 session needs calibration: export with int8=True and calib=..., then open the file")
    with tempfile.TemporaryDirectory(prefix="mobilenets-session-") as tmp:
        result = export(model, fmt, Path(tmp), verify=False, batch="dynamic" if fmt != "tflite" else 1,
                        precision=precision)
        session = open_session(result.path, backend, threads=threads, precision=precision)
    session.path = None
    return session


def summarize(times_ms: list[float]) -> dict:
    """Median / p90 / min milliseconds and the run count (``measure.latency.summarize`` as a dict)."""
    t = _latency.summarize(times_ms)
    return {"median_ms": t.median_ms, "p90_ms": t.p90_ms, "min_ms": t.min_ms, "runs": t.runs}


def interleaved_times(sessions: dict[str, Session], x: np.ndarray, *, warmup: int = 10, rounds: int = 20,
                      per_round: int = 10) -> dict[str, list[float]]:
    """Milliseconds of every ``run(x)`` of several sessions, ``per_round`` runs each in ``rounds``
    alternating rounds (``measure.latency.interleaved_times``), so that the load of a shared
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
