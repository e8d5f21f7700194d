"""What every runtime module provides: a ``Runtime`` record (how to export for it, quantize for it,
open its files, what it needs installed) and its ``Session`` class, on the ``Session`` base here.

A runtime module (``onnxruntime.py``, ``executorch.py``...) defines ``RUNTIME = Runtime(...)``;
``runtimes/__init__`` lists them in one table that export, eval, predict, bench and the zoo read.
"""
from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...core.errors import UsageError
from ...core.preprocessing import Preprocessing, default_preprocessing
from ...models.meta import CheckpointMeta
from ..common import quiet

PRECISIONS = ("fp32", "bf16", "fp16", "int8")


@dataclass(frozen=True)
class Runtime:
    """One runtime: its name as a backend, its export format and file, and the functions that make
    and run its files.

    ``convert(module, example, path, *, dynamic, opset, verbose, steps, outputs)`` writes the fp32
    file of an inference module (``graph.deploy_module``), its outputs named ``outputs`` in order
    (a classifier's ``("logits",)``) where the format names them. ``quantize(src, dst, calib, *,
    module, example, **options)`` writes the int8 file, from the fp32 file ``src`` or from
    ``module`` (as ``int8_from`` says); ``calib`` is N x C x H x W float32 (or NHWC for an NHWC
    export).
    ``session(path, *, threads, precision, meta)`` opens a file. ``inspect(path)``, for a runtime
    that cannot run here, checks what can be checked without running the file (returns a record).
    ``peer_convert(module, example, path)``: how users of the runtime convert a model themselves
    (the peer of ``bench --peers``)."""

    backend: str
    module: str                                     # what `import` proves the runtime installed
    package: str                                    # what to pip install for it
    dist: str = ""                                  # the distribution whose version is reported
    format: str | None = None                       # `export --format` (None: runs modules, not files)
    suffix: str | None = None                       # its file's suffix
    companions: tuple[str, ...] = ()                # files written beside it (weights: ".bin")
    opens: tuple[str, ...] = ()                     # other suffixes its sessions run (openvino: ".onnx")
    precisions: tuple[str, ...] = ("fp32",)         # what its sessions run
    export_precisions: tuple[str, ...] = ("fp32",)  # what `export` writes for it
    devices: tuple[str, ...] = ("cpu",)             # device types its sessions run on ("cpu", "cuda")
    dynamic_batch: bool = True                      # whether its files take any batch
    nhwc: bool = False                              # export NHWC input by default (TFLite)
    convert: Callable | None = None
    converter: tuple[tuple[str, str], ...] = ()     # (module, pip package) the export also needs
    quantize: Callable | None = None
    quantizer: tuple[tuple[str, str], ...] = ()     # (module, pip package) its int8 also needs
    int8_from: str = "file"                         # "file": quantized from the fp32 file; "module": from torch
    int8_calibrates: bool = True                    # False: weights-only int8, no calibration images
    int8_note: str = ""                             # why int8 is unavailable, when it is
    session: Callable[..., Session] | None = None
    runs_here: Callable[[], str | None] = lambda: None  # why its files cannot run on this machine, else None
    inspect: Callable[[Path], dict] | None = None
    peer_convert: Callable | None = None
    # what a timing export costs, relative to an ONNX export (torch: 0, it times the module), by precision;
    # the zoo and select search on cheap runtimes first and leave out those at SLOW_EXPORT or more
    export_cost: dict = field(default_factory=lambda: {"fp32": 1.0, "int8": 1.0})

    @property
    def files(self) -> tuple[str, ...]:
        """Every suffix an export for this runtime writes (main file first)."""
        return (self.suffix, *self.companions) if self.suffix else ()

    def require(self):
        """The runtime's module, or a one-line ``UsageError`` naming the pip package."""
        return import_or_explain(self.module, self.package, f"backend {self.backend!r}")

    def require_export(self, precision: str = "fp32") -> None:
        """Everything exporting for this runtime at ``precision`` needs, checked before any work."""
        self.require()
        if precision not in self.export_precisions:
            why = f" ({self.int8_note})" if precision == "int8" and self.int8_note else ""
            raise UsageError(f"{self.format} export writes {', '.join(self.export_precisions)}, not {precision}{why}")
        for module, package in self.converter + (self.quantizer if precision == "int8" else ()):
            import_or_explain(module, package, f"{self.format} {'int8' if precision == 'int8' else ''} export")

    def version(self) -> str | None:
        """The installed version, None when the runtime cannot be imported."""
        try:
            with quiet():  # some print banners or log lines when imported (ExecuTorch: its CPU probe)
                importlib.import_module(self.module)
            return importlib.metadata.version(self.dist or self.package)
        except Exception:  # noqa: BLE001 - a broken install is "not available" too
            return None


def import_or_explain(module: str, package: str, what: str):
    """``import module``, or a one-line ``UsageError`` saying ``what`` needs ``pip install package``."""
    try:
        with quiet():  # some print banners or log lines when imported
            return importlib.import_module(module)
    except ImportError as exc:
        raise UsageError(f"{what} needs {package}: pip install {package} ({first_words(exc)})") from None


def first_words(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


class Session:
    """Base of the runtime sessions. Subclasses implement ``_run_all`` (or, for one output, ``_run``)
    on the runtime's own layout; ``output_names`` lists the model's outputs in the export's order.

    ``meta``: the model's ``CheckpointMeta`` (an export's sidecar, a checkpoint's metadata) or a
    sidecar-like dict; ``self.meta`` keeps the sidecar's other fields (precision, input layout,
    batch...). ``input_shape``: the input shape the graph declares, in its own layout, ``None``
    for dynamic dimensions (``None`` altogether when unknown)."""

    backend: str = ""
    device: str = "cpu"

    def __init__(self, *, threads: int = 1, precision: str = "fp32", meta: CheckpointMeta | dict | None = None,
                 path: Path | None = None):
        if threads < 1:
            raise UsageError(f"threads must be >= 1, got {threads}")
        if precision not in PRECISIONS:
            raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.threads, self.precision, self.path = threads, precision, path
        self.checkpoint_meta = as_meta(meta)
        self.meta: dict = dict(self.checkpoint_meta.extra)
        self.input_layout: str = self.meta.get("input_layout", "NCHW")
        self.fixed_batch: int | None = None
        self.input_shape: tuple[int | None, ...] | None = None
        self.output_names: list[str] = []  # the model's outputs, in the export's order (set by the session)
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
        if shape is None or len(shape) not in (3, 4):
            return None
        return shape[-3] if self.input_layout == "NHWC" else shape[-2]

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
        sidecar that takes ``N x H x W x C`` (last dimension 1 or 3, second not) is run as NHWC, one
        that takes ``C x H x W`` (a detector's single image) as CHW."""
        dims = tuple(int(d) if isinstance(d, (int, np.integer)) and int(d) > 0 else None for d in shape)
        self.input_shape = dims
        if "input_layout" not in self.meta and len(dims) == 3:
            self.input_layout = "CHW"
        self.fixed_batch = dims[0] if fixed_batch and dims and self.input_layout != "CHW" else None
        if "input_layout" not in self.meta and len(dims) == 4 and dims[-1] in (1, 3) and dims[1] not in (1, 3):
            self.input_layout = "NHWC"

    def run(self, x: np.ndarray) -> np.ndarray:
        """N x C x H x W float32 -> N x classes float32 logits: the output of a one-output model
        (``run_all`` gives every output of a backbone, segmenter or detector)."""
        if len(self.output_names) > 1:
            raise UsageError(f"{self.path.name if self.path else self.backend} gives {len(self.output_names)} "
                             f"outputs ({', '.join(self.output_names)}): use run_all(x)")
        return self._batched(self._native(x), lambda c: [np.asarray(self._run(c), dtype=np.float32)])[0]

    __call__ = run

    def run_all(self, x: np.ndarray) -> list[np.ndarray]:
        """Every output of the model, in the export's order (``output_names``, the sidecar's
        ``outputs``): N x C x H x W float32 in, each output with the batch first (as in ``run``, a
        fixed-batch file runs in chunks). A detector (input layout "CHW") takes one image, 3 x H x W
        or 1 x 3 x H x W, and gives its boxes, scores and labels. A one-output model gives ``[run(x)]``."""
        if len(self.output_names) <= 1:
            return [self.run(x)]
        return self._batched(self._native(x), lambda c: [np.asarray(o) for o in self._run_all(c)])

    def _native(self, x: np.ndarray) -> np.ndarray:
        """``x`` checked and in the file's layout: NHWC transposed, one CHW image for a detector."""
        x = np.asarray(x)
        if self.input_layout == "CHW":
            if x.ndim == 4 and len(x) == 1:
                x = x[0]
            if x.ndim != 3:
                raise UsageError(f"{self.backend} session of a detector takes one 3 x H x W image, got shape {x.shape}")
            return np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 4:
            raise UsageError(f"{self.backend} session expects N x C x H x W input, got shape {x.shape}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.input_layout == "NHWC":
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        return x

    def _batched(self, x: np.ndarray, fn) -> list[np.ndarray]:
        """``fn`` (native input -> list of outputs) on ``x``, in chunks of a fixed batch (the last one
        padded), each output concatenated over the chunks."""
        b = self.fixed_batch
        if b is None or self.input_layout == "CHW" or len(x) == b:
            return fn(x)
        parts = []
        for i in range(0, len(x), b):
            chunk = x[i:i + b]
            n = len(chunk)
            if n < b:  # pad the last chunk to the exported batch
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], b - n, axis=0)])
            parts.append([o[:n] for o in fn(chunk)])
        return [np.concatenate(outs) for outs in zip(*parts, strict=True)]

    def runner(self, x: np.ndarray):
        """A zero-argument callable that runs ``x`` (N x C x H x W), converted once to the file's own
        layout: what latency loops time, without the per-call conversion of ``run``. Every output is
        computed."""
        native = self._native(x)
        if self.fixed_batch is not None and self.input_layout != "CHW" and len(native) != self.fixed_batch:
            return lambda: self.run_all(x)
        run = self._run_all if len(self.output_names) > 1 else self._run
        return lambda: run(native)

    def mark(self, precision: str) -> Session:
        """Record the model's precision (an int8 file runs with the runtime's fp32 setting for its float parts)."""
        self.precision = precision
        return self

    def _run(self, x: np.ndarray) -> np.ndarray:
        """The model's (first) output on ``x``, already in the file's layout and batch."""
        return self._run_all(x)[0]

    def _run_all(self, x: np.ndarray) -> list[np.ndarray]:
        """Every output on ``x`` (in the file's layout and batch), in ``output_names``' order. A session
        implements this, or ``_run`` alone when its files have one output."""
        raise NotImplementedError

    def _name_outputs(self, names: list[str], *, by_position: bool = False) -> list[str]:
        """Set ``output_names`` from the file's output ``names`` (in the file's order) and return those
        file names in the export's order. The export's order is the sidecar's ``outputs``: the file's
        names sorted as the sidecar lists them when the file carries the export's names, else
        (``by_position``: files whose outputs are numbered, not named: ncnn, TFLite, ExecuTorch) the
        file's order, named by the sidecar when it lists as many."""
        wanted = self.meta.get("outputs")
        wanted = [str(n) for n in wanted] if isinstance(wanted, list) else None
        if wanted and not by_position and sorted(wanted) == sorted(names):
            names = list(wanted)
        self.output_names = wanted if wanted and len(wanted) == len(names) else list(names)
        return list(names)

    def __repr__(self) -> str:
        what = self.path.name if self.path else "module"
        return f"{type(self).__name__}({what}, threads={self.threads}, precision={self.precision})"


def as_meta(meta: CheckpointMeta | dict | None) -> CheckpointMeta:
    """A ``CheckpointMeta`` from a sidecar-like dict (``preprocessing`` and ``class_names`` parsed,
    every other field kept in ``extra``)."""
    if isinstance(meta, CheckpointMeta):
        return meta
    meta = dict(meta or {})
    pre = meta.pop("preprocessing", None)
    names = meta.pop("class_names", None)
    return CheckpointMeta(meta.pop("model", None), None, Preprocessing.from_dict(pre) if isinstance(pre, dict)
                          else None, list(names) if names else None, meta)


def load_error(backend: str, path: Path, exc: BaseException) -> UsageError:
    """The one-line error of a runtime that cannot load ``path``."""
    return UsageError(f"{backend} cannot load {path}: {first_words(exc)}")
