"""What every deploy module shares: the errors, the export sidecar, progress steps,
and ``quiet``, which keeps the chatter of third-party converters out of our output.

Nothing here imports another deploy module, so converters, runtimes, quantizers and ``export``
can all build on it.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

from ..core.errors import UsageError
from ..core.files import atomic_write_text
from ..core.preprocessing import Preprocessing
from ..models.meta import CheckpointMeta
from ..models.network import ModelConfig

SIDECAR_FORMAT = "mobilenets-export"
DEFAULT_OPSET = 18
MIN_OPSET = 17
TRAINING_SPLIT = ("data", "val_size", "split_seed")  # what a checkpoint records of its held-out images

# Loggers of converters and quantizers that report progress or retried fallbacks at INFO/WARNING.
NOISY_LOGGERS = ("executorch", "coremltools", "torch._guards", "torch.export", "torch._dynamo", "torch.onnx",
                 "torch.fx", "onnxscript", "onnx_ir", "onnxruntime", "nncf", "openvino", "torchao", "litert_torch",
                 "jax", "absl", "tensorflow")


class ExportError(UsageError):
    """A converter failed on a valid request (reported as one line)."""


class VerificationError(RuntimeError):
    """The exported file does not compute what the PyTorch model computes (the file is discarded)."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message: what a one-line error can show."""
    lines = [s for s in str(exc).strip().splitlines() if s.strip()]
    return (lines[0] if lines else type(exc).__name__)[:limit]


# ------------------------------------------------------------------------------------------
# quiet


_quiet_depth = 0


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence third-party output for the block: converters' prints and progress bars (stdout and
    stderr, at the Python and the file-descriptor level, so C++ logs and ANSI colour codes stay
    out too), their loggers, Python warnings, and the ``WARNING:root:`` lines a library's bare
    ``logging.warning`` call would otherwise install on the root logger for the rest of the
    process. Errors still surface as exceptions. Re-entrant."""
    global _quiet_depth
    if _quiet_depth:
        yield
        return
    _quiet_depth += 1
    root = logging.getLogger()
    guard = logging.NullHandler()  # a root logger with a handler: logging.warning() won't basicConfig()
    root.addHandler(guard)
    loggers = [root, *(logging.getLogger(n) for n in NOISY_LOGGERS)]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), _fd_silenced(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
        root.removeHandler(guard)
        _quiet_depth -= 1


@contextlib.contextmanager
def _fd_silenced() -> Iterator[None]:
    """File descriptors 1 and 2 point to a scratch file for the block (what C/C++ code prints)."""
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(Exception):
            stream.flush()
    saved: list[tuple[int, int]] = []
    with tempfile.TemporaryFile() as sink:
        try:
            for fd in (1, 2):
                try:
                    saved.append((fd, os.dup(fd)))
                    os.dup2(sink.fileno(), fd)
                except OSError:
                    continue
            yield
        finally:
            for fd, copy in reversed(saved):
                os.dup2(copy, fd)
                os.close(copy)


# ------------------------------------------------------------------------------------------
# progress


class Steps:
    """Receives the progress of an export: each step's start and end (``trace``, ``write``,
    ``quantize``, ``verify``...). This base says nothing; the CLI shows a status line on a
    terminal and one line per finished step otherwise."""

    def start(self, name: str) -> None:
        pass

    def done(self, name: str, seconds: float) -> None:
        pass

    def log(self, message: str) -> None:
        pass

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.start(name)
        t = time.perf_counter()
        yield
        self.done(name, time.perf_counter() - t)


NO_STEPS = Steps()


# ------------------------------------------------------------------------------------------
# the sidecar


def export_meta(net, *, meta: CheckpointMeta | None = None, config: ModelConfig | None = None, fmt: str, backend: str,
                precision: str, resolution: int, batch: int | str, nhwc: bool, preprocessing: Preprocessing) -> dict:
    """The JSON sidecar of an export of ``net`` (described by ``meta``, by default its own
    ``checkpoint_meta``; ``config``, by default its own, is our network's: a segmenter's or detector's
    backbone, None when it is not ours): how to feed the file and what its outputs mean, so that a
    session needs nothing but the file and this record."""
    meta = meta if meta is not None else getattr(net, "checkpoint_meta", None)
    config = config if config is not None else getattr(net, "config", None)
    names = getattr(meta, "class_names", None)
    extra = getattr(meta, "extra", None) or {}
    # the training run's data and hold-out, so that `eval FILE --data X` scores the images its checkpoint was
    # validated on (read back as the export's CheckpointMeta.extra, as a checkpoint's own)
    split = {k: extra[k] for k in TRAINING_SPLIT if extra.get(k) is not None}
    classes = config.num_classes if config is not None else None
    return {**split, "format": SIDECAR_FORMAT,
            "model": getattr(meta, "variant", None) or (config.family if config is not None else None),
            "config": config.to_dict() if config is not None else None, "export_format": fmt, "backend": backend,
            "precision": precision, "resolution": int(resolution), "batch": batch,
            "input_layout": "NHWC" if nhwc else "NCHW", "preprocessing": preprocessing.to_dict(),
            "class_names": list(names) if names and len(names) == classes else None}


def sidecar_of(path: str | os.PathLike) -> Path:
    """``model.onnx`` -> ``model.json``."""
    return Path(path).with_suffix(".json")


def write_sidecar(model_file: str | os.PathLike, meta: dict) -> Path:
    """Write ``meta`` beside ``model_file`` (atomically, with the umask's permissions)."""
    return atomic_write_text(sidecar_of(model_file), json.dumps(meta, indent=1, default=str))
