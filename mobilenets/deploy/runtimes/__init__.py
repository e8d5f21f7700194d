"""Every runtime in one table, and one ``Session`` over all of them.

Each runtime is a module here (export, int8, session, what it needs installed) that defines a
``Runtime`` record (``base.Runtime``); ``RUNTIMES`` lists them, and export, eval, predict, bench
and the zoo read it, so adding a runtime is adding a module and a line below.

``open_session`` accepts what ``weights.resolve_model`` accepts: a model name, a checkpoint, a
training run directory, an exported file (its runtime told by its suffix) or a module. ``run``
always takes N x C x H x W float32 and returns N x classes float32 logits; ``run_all`` returns
every output of a backbone, segmenter or detector, in the export's order (the sidecar's
``outputs``); a file exported with NHWC input gets its transpose, and a file exported for a
fixed batch is run in chunks of that batch, so ``predict`` and ``eval`` need not know how a file
was exported. Preprocessing and class
names come from the export's JSON sidecar (or the checkpoint's metadata); a file without its
sidecar still says its input shape, from which the session takes its layout and resolution. A
runtime that is not installed is a ``UsageError`` naming the pip package.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ...core import timing as _latency
from ...core.errors import UsageError
from ...models.meta import CheckpointMeta
from ...models.network import MobileNet, unwrap
from ...weights.resolve import CHECKPOINT_SUFFIXES, EXPORT_SUFFIXES, resolve_model
from ..common import DEFAULT_OPSET
from ..graph import deploy_module
from . import coreml, executorch, litert, mnn, ncnn, onnxruntime, openvino
from . import pytorch as torch_runtime
from .base import PRECISIONS, Runtime, Session

__all__ = ["BACKENDS", "FORMATS", "PRECISIONS", "RUNTIMES", "Runtime", "Session", "available_backends",
           "by_format", "by_suffix", "files_of", "interleaved_latency", "interleaved_times", "open_session",
           "paired_ratio", "require", "summarize"]

RUNTIMES: dict[str, Runtime] = {r.backend: r for r in (
    torch_runtime.EAGER, torch_runtime.COMPILE, torch_runtime.CUDAGRAPHS,
    onnxruntime.RUNTIME, openvino.RUNTIME, litert.RUNTIME, executorch.RUNTIME, ncnn.RUNTIME, mnn.RUNTIME,
    coreml.RUNTIME, onnxruntime.TENSORRT)}
BACKENDS = tuple(RUNTIMES)
TORCH_BACKENDS = ("torch", "compile", "cudagraphs")
FORMATS = tuple(r.format for r in RUNTIMES.values() if r.format)


def by_format(fmt: str) -> Runtime:
    """The runtime whose export format is ``fmt`` ("onnx", "executorch"...)."""
    for r in RUNTIMES.values():
        if r.format == fmt:
            return r
    raise UsageError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")


def by_suffix(suffix: str) -> list[Runtime]:
    """The runtimes that open files ending in ``suffix``, its own first (``.onnx``: onnxruntime, openvino...)."""
    suffix = suffix.lower()
    own = [r for r in RUNTIMES.values() if r.suffix == suffix]
    return own + [r for r in RUNTIMES.values() if suffix in r.opens and r not in own]


def files_of(path: str | os.PathLike) -> list[Path]:
    """The files an export is made of: a package folder's files, else the file and the companions its
    runtime writes beside it (an IR's or ncnn's ``.bin``) that exist."""
    path = Path(path)
    if path.is_dir():
        return sorted(f for f in path.rglob("*") if f.is_file())
    own = [r for r in RUNTIMES.values() if r.suffix == path.suffix.lower()]
    beside = (path.with_suffix(s) for s in (own[0].companions if own else ()))
    return [path, *(p for p in beside if p.is_file())]


def require(backend: str):
    """The runtime module of ``backend``, or a one-line ``UsageError`` saying what to pip install."""
    if backend not in RUNTIMES:
        raise UsageError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    return RUNTIMES[backend].require()


def available_backends() -> dict[str, str | None]:
    """backend -> installed version (None when its runtime cannot be imported or cannot run here)."""
    return {b: (r.version() if r.runs_here() is None else None) for b, r in RUNTIMES.items()}


def open_session(target, backend: str | None = None, *, threads: int = 1, precision: str | None = None,
                 weights: str | None = None, device: str | None = None) -> Session:
    """A ``Session`` on ``target``: what ``weights.resolve_model`` accepts (a module, a model name
    with optional ``weights``, a checkpoint, a run directory, an exported file).

    ``backend`` defaults to the one an exported file's suffix names, else "torch"; a model given
    with another backend is converted for it first (fp32, into a temporary directory, unverified).
    ``precision`` defaults to what the export's sidecar records ("fp32" otherwise); "bf16" is a
    runtime setting (OpenVINO, torch). ``device``: "cpu" (default) or "cuda[:N]", for the torch
    backends and ONNX Runtime (its CUDA / TensorRT providers).
    """
    if backend is not None and backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    if isinstance(target, nn.Module) and not isinstance(unwrap(target), MobileNet):
        # any other module (a backbone, segmenter, detector, a peer implementation) runs in PyTorch as it is
        if (backend or "torch") not in TORCH_BACKENDS:
            raise UsageError(f"only classifiers are converted for {backend} on the fly; export "
                             f"{type(unwrap(target)).__name__} (mobilenets.deploy.export) and open the file")
        return torch_runtime.TorchSession(target, backend=backend or "torch", device=device, threads=threads,
                                          precision=precision or "fp32")
    if isinstance(target, (str, os.PathLike)):
        _check_suffix(Path(target))
    resolved = resolve_model(target, weights, pretrained=True)
    if not resolved.is_export:
        backend = backend or "torch"
        precision = precision or "fp32"
        if backend in TORCH_BACKENDS:
            return torch_runtime.TorchSession(resolved.model, backend=backend, device=device, threads=threads,
                                              precision=precision, meta=resolved.meta, path=resolved.path)
        return _session_for_module(resolved.model, resolved.meta, backend, threads=threads, precision=precision,
                                   device=device)
    path = resolved.path
    backend = backend or by_suffix(path.suffix)[0].backend
    if backend in TORCH_BACKENDS:
        raise UsageError(f"the {backend} backend runs checkpoints (.safetensors, .pth), not {path.suffix} files")
    stored = resolved.meta.extra.get("precision", "fp32")
    precision = precision or ("fp32" if stored not in PRECISIONS else stored)
    return _file_session(path, backend, threads=threads, precision=precision, meta=resolved.meta, device=device)


def _check_suffix(path: Path) -> None:
    suffix = path.suffix.lower()
    if path.is_file() and suffix not in EXPORT_SUFFIXES | CHECKPOINT_SUFFIXES:
        raise UsageError(f"cannot tell the runtime of {path.name} from its suffix: exported files end in "
                         f"{', '.join(sorted(EXPORT_SUFFIXES))}, checkpoints in .safetensors or .pth")


def _file_session(path: Path, backend: str, *, threads: int, precision: str, meta: CheckpointMeta,
                  device: str | None = None) -> Session:
    """The session of ``backend`` on the exported file ``path``."""
    runtime = RUNTIMES[backend]
    if path.suffix.lower() not in (runtime.suffix, *runtime.opens):
        runs = ", ".join(s for s in (runtime.suffix, *runtime.opens) if s)
        raise UsageError(f"{backend} runs {runs} files, not {path.name}")
    if precision not in runtime.precisions:
        raise UsageError(f"{backend} runs {', '.join(runtime.precisions)}, not {precision}")
    runtime.require()
    kw = dict(threads=threads, meta=meta)
    if device not in (None, "cpu"):
        if "cuda" not in runtime.devices:
            raise UsageError(f"{backend} runs on the CPU here; on a GPU, use the torch backends or onnxruntime")
        kw["device"] = device
    return runtime.session(path, precision=precision, **kw)


def _session_for_module(model: MobileNet, meta: CheckpointMeta, backend: str, *, threads: int,
                        precision: str, device: str | None = None) -> Session:
    """Convert ``model`` (fp32) to a temporary file for ``backend`` and open it (the runtime reads
    the file into memory; the file is gone when this returns)."""
    if precision == "int8":
        raise UsageError("an int8 session needs calibration: export with int8=True and calib=..., then open the file")
    runtime = RUNTIMES[backend]
    if runtime.convert is None:  # a runtime of other runtimes' files (tensorrt: .onnx)
        runtime = by_suffix(runtime.opens[0])[0]
    if precision not in runtime.precisions or precision not in runtime.export_precisions:
        raise UsageError(f"{backend} runs {', '.join(runtime.precisions)}, not {precision}")
    why = RUNTIMES[backend].runs_here()
    if why:
        raise UsageError(why)
    runtime.require_export(precision)
    dynamic = runtime.dynamic_batch
    res, chans = model.config.resolution, model.config.in_chans
    example = torch.zeros((2 if dynamic else 1, chans, res, res))  # batch 1 would specialise a dynamic dim
    file_meta = CheckpointMeta(meta.variant, meta.config, meta.preprocessing, meta.class_names,
                               {"precision": precision, "input_layout": "NCHW", "resolution": res,
                                "batch": "dynamic" if dynamic else 1})
    with tempfile.TemporaryDirectory(prefix="mobilenets-session-") as tmp:
        path = Path(tmp) / f"model{runtime.suffix}"
        runtime.convert(deploy_module(model), example, path, dynamic=dynamic, opset=DEFAULT_OPSET)
        session = _file_session(path, backend, threads=threads, precision=precision, meta=file_meta, device=device)
    session.path = None
    return session


def summarize(times_ms: list[float]) -> dict:
    """Median / p90 / min milliseconds and the run count (``core.timing.summarize`` as a dict)."""
    t = _latency.summarize(times_ms)
    return {"median_ms": t.median_ms, "p90_ms": t.p90_ms, "min_ms": t.min_ms, "runs": t.runs}


def interleaved_times(sessions: dict[str, Session], x: np.ndarray, *, warmup: int = 10, rounds: int = 20,
                      per_round: int = 10) -> dict[str, list[float]]:
    """Milliseconds of every ``run_all(x)`` (every output: a backbone's maps, a detector's boxes) of
    several sessions, ``per_round`` runs each in ``rounds`` alternating rounds
    (``core.timing.interleaved_times``), so that the load of a shared machine hits them all alike."""
    runners = {k: (lambda s=s: s.run_all(x)) for k, s in sessions.items()}
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


