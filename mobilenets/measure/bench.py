"""``mobilenets bench``: latency of models on every installed runtime, peers beside them.

A bench is a grid of cells: targets x backends x precisions, each cell a ``Session`` (see
``mobilenets.deploy.runtimes``) on a cached export, all timed together by
``latency.interleaved``. A target is anything ``weights.resolve_model`` accepts: a model name, a
checkpoint, a training run directory (exported for each backend), or an exported file (timed as
it is, on the runtime of its suffix). With ``peers=True`` the same architecture from torchvision
or timm joins the grid on the same backends (exported the way their users export it: plain
``torch.onnx.export``, ``litert_torch.convert``), so every figure has a ratio beside it.

Latency does not depend on the weights' values, so names are built with random weights and
nothing is downloaded; int8 exports are calibrated on a few random inputs for the same reason
(their accuracy is measured by ``mobilenets eval``), and exports made for timing are not
verified against PyTorch (``mobilenets export`` verifies what it ships). Exports are kept in
``<cache dir>/exports`` and every figure in the measurement cache (``measure.cache``): a cell
measured before on this machine, runtime version, threads, batch, resolution and precision is
read back (its row says so, with its date) unless ``fresh``.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..core.errors import UsageError
from ..core.files import atomic_path, atomic_write, check_parent, publish, staging_dir
from ..core.hardware import cpu_has_bf16, resolve_device
from ..deploy.common import sidecar_of, write_sidecar
from ..deploy.export import export
from ..deploy.quantize import file_size, quantize_file
from ..deploy.runtimes import (
    BACKENDS,
    PRECISIONS,
    RUNTIMES,
    TORCH_BACKENDS,
    available_backends,
    by_format,
    by_suffix,
    files_of,
    open_session,
)
from ..deploy.runtimes.onnxruntime import peer_onnx
from ..models import VARIANTS, MobileNet, ModelConfig, model_config
from ..weights import cache_dir, create_model, resolve_model
from ..weights.resolve import Resolved
from . import latency
from .cache import MeasurementCache, Record, key_id, machine_key
from .profile import profile

# All read off the runtime table (deploy.runtimes). What each backend can run (bf16 only where the CPU
# has native bf16, checked at run time; fp16 in torch on CUDA only).
SUPPORTED = {b: r.precisions for b, r in RUNTIMES.items()}
# The export a backend times: its own format, or the format of the files it opens (tensorrt: onnx).
EXPORT_FORMAT = {b: r.format or by_suffix(r.opens[0])[0].format for b, r in RUNTIMES.items() if r.format or r.opens}
EXPORT_SUFFIX = {r.format: r.suffix for r in RUNTIMES.values() if r.format}
# The backends that run an exported file, by suffix (the first: its own runtime).
FILE_BACKENDS = {suffix: tuple(r.backend for r in by_suffix(suffix)) for suffix in EXPORT_SUFFIX.values()}
CALIB_IMAGES = 8   # random calibration inputs of a timing export: the latency does not depend on them
# Formats whose int8 timing export is quantized from the cached fp32 file (no second torch export);
# those quantized from the torch module (PT2E: TFLite, ExecuTorch) go through ``export``.
QUANTIZE_FROM_FP32 = tuple(r.format for r in RUNTIMES.values() if r.format and r.quantize and r.int8_from == "file")
# Backends left out of the default set: other modes of torch, GPU-only and the runtimes a device must ask for.
NOT_BY_DEFAULT = ("compile", "cudagraphs", "tensorrt")
# (family, width) -> (library, model name): the peers' own implementations of the same architecture.
PEERS = {
    ("mobilenet_v1", 1.0): ("timm", "mobilenetv1_100"),
    ("mobilenet_v2", 1.0): ("torchvision", "mobilenet_v2"),
    ("mobilenet_v2", 1.4): ("timm", "mobilenetv2_140"),
    ("mobilenet_v2", 0.75): ("timm", "mobilenetv2_075"),
    ("mobilenet_v2", 0.5): ("timm", "mobilenetv2_050"),
    ("mobilenet_v2", 0.35): ("timm", "mobilenetv2_035"),
    ("mobilenet_v3_large", 1.0): ("torchvision", "mobilenet_v3_large"),
    ("mobilenet_v3_large", 0.75): ("timm", "mobilenetv3_large_075"),
    ("mobilenet_v3_small", 1.0): ("torchvision", "mobilenet_v3_small"),
    ("mobilenet_v3_small", 0.75): ("timm", "mobilenetv3_small_075"),
    ("mobilenet_v3_large_minimal", 1.0): ("timm", "tf_mobilenetv3_large_minimal_100"),
    ("mobilenet_v3_small_minimal", 1.0): ("timm", "tf_mobilenetv3_small_minimal_100"),
}
OUTPUT_SUFFIXES = (".json", ".csv")

# (label, done, total): what is being prepared or timed, and how far the whole job is.
Progress = Callable[[str, float, float], None]


def _no_progress(label: str, done: float, total: float) -> None:
    pass


@dataclass
class BenchRow:
    model: str
    impl: str                  # "mobilenets", or the peer's library: "torchvision", "timm"
    backend: str
    precision: str
    width: float | None
    resolution: int
    batch: int
    threads: int
    macs: int | None
    params: int | None
    timing: latency.Timing
    floor_ms: float | None = None    # GEMM floor on ``threads`` cores (see ``latency.gemm_floor_ms``)
    peer_model: str | None = None
    file: str | None = None          # the exported file timed (None: a PyTorch module)
    size_bytes: int | None = None    # its size on disk (an OpenVINO IR's weights included)
    measured_at: str = ""            # ISO date of the measurement
    cached: bool = False             # read back from the measurement cache, not measured in this run

    def to_dict(self) -> dict:
        d = asdict(self)
        d["timing"] = self.timing.to_dict()
        return d


@dataclass
class BenchReport:
    rows: list[BenchRow]
    machine: dict
    settings: dict
    warnings: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"machine": self.machine, "settings": self.settings, "rows": [r.to_dict() for r in self.rows],
                "warnings": self.warnings, "skipped": self.skipped}

    def best(self, model: str, impl: str | None = None, precision: str | None = "fp32") -> BenchRow | None:
        """The fastest row of ``model`` (ours: impl "mobilenets"; peers: any other impl)."""
        rows = [r for r in self.rows if r.model == model and (precision is None or r.precision == precision)
                and (impl is None or (r.impl == "mobilenets") == (impl == "mobilenets"))]
        return min(rows, key=lambda r: r.timing.median_ms, default=None)

    def write(self, path: str | os.PathLike) -> Path:
        """Write the report as JSON or CSV, by ``path``'s suffix."""
        suffix = Path(path).suffix.lower()
        if suffix == ".csv":
            return self.write_csv(path)
        if suffix == ".json":
            return self.write_json(path)
        raise UsageError(f"cannot tell the format of {path}: use a .json or .csv suffix")

    def write_json(self, path: str | os.PathLike) -> Path:
        return atomic_write(Path(path), json.dumps(self.to_dict(), indent=1).encode())

    def write_csv(self, path: str | os.PathLike) -> Path:
        cols = ["model", "impl", "backend", "precision", "width", "resolution", "batch", "threads", "macs", "params",
                "median_ms", "mean_ms", "p10_ms", "p90_ms", "spread", "runs", "throughput", "floor_ms", "measured_at",
                "cached"]
        lines = [",".join(cols)]
        for r in self.rows:
            vals = {**asdict(r), **r.timing.to_dict()}
            lines.append(",".join("" if vals.get(c) is None else str(vals[c]) for c in cols))
        return atomic_write(Path(path), ("\n".join(lines) + "\n").encode())


def check_output(path: str | os.PathLike | None, suffixes: Sequence[str] = OUTPUT_SUFFIXES) -> Path | None:
    """``path`` checked before anything is measured: a known suffix, a folder that can hold it,
    not a folder itself (``core.files.check_parent``)."""
    if path is None:
        return None
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"cannot write {path}: it is a folder (give a file name ending in {' or '.join(suffixes)})")
    if path.suffix.lower() not in suffixes:
        raise UsageError(f"cannot tell the format of {path}: use a {' or '.join(suffixes)} suffix")
    return check_parent(path)


def export_cache() -> Path:
    return cache_dir() / "exports"


@functools.cache
def runtime_versions() -> dict[str, str | None]:
    """backend -> installed version (None: not usable), probed once per process."""
    return available_backends()


GPU_BACKENDS = tuple(b for b, r in RUNTIMES.items() if "cuda" in r.devices)  # what --device cuda runs


def installed_backends(requested: Sequence[str] | None, device: str = "cpu") -> tuple[list[str], list[str]]:
    """(usable backends, notes about requested ones that are not installed or do not run on ``device``)."""
    if device != "cpu":
        gpu = [b for b in (requested or GPU_BACKENDS) if b in GPU_BACKENDS]
        use, notes = installed_backends(gpu)
        if requested is None:
            use = [b for b in use if b != "compile"]
            notes = []
        return use, notes + [f"backend {b} runs on the CPU, not {device}" for b in (requested or ())
                             if b not in GPU_BACKENDS]
    if requested is not None:
        unknown = [b for b in requested if b not in BACKENDS]
        if unknown:
            raise UsageError(f"unknown backend {unknown[0]!r}; known: {', '.join(BACKENDS)}")
    have = runtime_versions()
    if requested is None:
        return [b for b in BACKENDS if have.get(b) and b not in NOT_BY_DEFAULT], []
    missing = [f"backend {b}: {RUNTIMES[b].runs_here() or 'not installed'}" for b in requested if not have.get(b)]
    return [b for b in requested if have.get(b)], missing


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _config_identity(config: ModelConfig) -> str:
    """The architecture's identity: what decides its latency (not its weights' values)."""
    blob = json.dumps(config.to_dict(), sort_keys=True, default=str)
    return "arch:" + hashlib.sha256(blob.encode()).hexdigest()[:16]


def _file_identity(path: Path) -> str:
    """An exported file's identity: the hash of its bytes (the weights beside it, a package's files included)."""
    h = hashlib.sha256()
    for p in files_of(path):
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return "file:" + h.hexdigest()[:16]


def _size_bytes(path: Path | None) -> int | None:
    if path is None or not path.exists():
        return None
    return file_size(path)


@dataclass
class Target:
    """One thing to time: a model (built lazily, random weights for names) or an exported file."""
    label: str
    identity: str                    # what the measurement cache knows it by
    resolution: int | None
    config: ModelConfig | None
    path: Path | None = None         # an exported file, timed as it is
    precision: str | None = None     # the exported file's precision
    build: Callable[[], MobileNet] | None = field(default=None, repr=False)
    _model: MobileNet | None = field(default=None, repr=False)
    _complexity: tuple[int, int] | None = field(default=None, repr=False)

    @property
    def is_file(self) -> bool:
        return self.path is not None

    @property
    def family(self) -> str | None:
        return self.config.family if self.config is not None else None

    @property
    def width(self) -> float | None:
        return self.config.width if self.config is not None else None

    def model(self) -> MobileNet:
        if self._model is None:
            self._model = self.build().eval()
        return self._model

    def complexity(self) -> tuple[int | None, int | None]:
        """(MACs, params) for one image at the target's resolution (None: an export without its config)."""
        if self._complexity is None:
            if self.config is None or self.resolution is None:
                return None, None
            model = self.model() if self.build is not None else MobileNet(self.config).eval()
            prof = profile(model, resolution=self.resolution)
            self._complexity = (prof.macs, prof.params)
        return self._complexity


def resolve_target(spec, resolution: int | None = None) -> Target:
    """A ``Target`` for a model name, checkpoint, run directory, exported file or module (see module doc).
    Unknown names and missing files are a ``UsageError`` here, before anything is measured."""
    if isinstance(spec, str) and spec in VARIANTS:
        config = model_config(spec, resolution=resolution)
        return Target(spec, _config_identity(config), config.resolution, config,
                      build=lambda: create_model(spec, resolution=resolution))
    resolved: Resolved = resolve_model(spec)
    label = os.fspath(spec) if isinstance(spec, (str, os.PathLike)) else resolved.name
    if resolved.is_export:
        meta = resolved.meta
        res = (meta.preprocessing.resolution if meta.preprocessing is not None
               else meta.config.resolution if meta.config is not None else meta.extra.get("resolution"))
        if resolution is not None and res is not None and int(res) != resolution:
            raise UsageError(f"{resolved.path.name} was exported at resolution {res}; --resolution {resolution} "
                             f"applies to models, not exported files")
        if res is None:  # no sidecar: the graph's declared input shape says it
            res = open_session(resolved.path).resolution
            if res is None:
                raise UsageError(f"cannot tell the input resolution of {resolved.path.name} (no sidecar, dynamic "
                                 f"input shape)")
        precision = meta.extra.get("precision", "fp32")
        return Target(label, _file_identity(resolved.path), int(res),
                      replace(meta.config, resolution=int(res)) if meta.config is not None and res else meta.config,
                      path=resolved.path, precision=precision if precision in PRECISIONS else "fp32")
    model = resolved.model
    config = replace(model.config, resolution=resolution) if resolution else model.config
    target = Target(label, _config_identity(config), config.resolution, config, build=lambda: model)
    return target


@dataclass(eq=False)
class Cell:
    """One (target, implementation, backend, precision) of the grid (compared by identity)."""
    target: Target
    impl: str
    backend: str
    precision: str
    peer: str | None = None          # the peer model's name (impl is its library)
    identity: str = ""

    @property
    def label(self) -> str:
        what = self.peer if self.peer else self.target.label
        return f"{what} on {self.backend} {self.precision}"


class Bench:
    """What measuring needs besides the cells: threads, batch, the measurement cache, the machine's
    GEMM throughput (for the floor) and a progress callback. Shared by ``bench``, ``zoo_report``
    and ``select`` so that they read and write the same figures."""

    def __init__(self, *, threads: int = 1, batch: int = 1, cache: MeasurementCache | None = None,
                 fresh: bool = False, progress: Progress | None = None, device: str = "cpu"):
        if threads < 1:
            raise UsageError(f"threads must be >= 1, got {threads}")
        if batch < 1:
            raise UsageError(f"batch must be >= 1, got {batch}")
        self.threads, self.batch, self.device = threads, batch, device
        self.cache = cache if cache is not None else MeasurementCache(fresh=fresh)
        if fresh:
            self.cache.fresh = True
        self.progress = progress or _no_progress
        self._flops: float | None = None
        self._peers: dict[tuple[str, float], tuple[str, str, nn.Module] | None] = {}

    # -- the machine ---------------------------------------------------------------------------
    def gemm_flops(self) -> float:
        """This machine's single-core fp32 GEMM FLOP/s, measured once and kept in the cache."""
        if self._flops is None:
            key = {"what": "gemm_fp32", **machine_key(), "torch": torch.__version__, "threads": 1}
            rec = self.cache.lookup(key)
            if rec is None or not rec.extra.get("flops"):
                self.progress("measuring the machine's fp32 GEMM peak", 0, 0)
                rec = self.cache.store(key, None, flops=latency.gemm_flops())
                self.cache.save()
            self._flops = float(rec.extra["flops"])
        return self._flops

    def floor_ms(self, macs: int | None) -> float | None:
        """The CPU GEMM floor (None on a GPU: the CPU's GEMM rate says nothing of it)."""
        if self.device != "cpu":
            return None
        return latency.gemm_floor_ms(macs, self.gemm_flops(), self.threads)

    # -- cells ----------------------------------------------------------------------------------
    def cell(self, target: Target, backend: str, precision: str) -> Cell:
        return Cell(target, "mobilenets", backend, precision, identity=target.identity)

    def peer_cell(self, target: Target, backend: str) -> Cell | None:
        """The peer of ``target`` on ``backend`` (fp32), if the peer library is installed."""
        found = PEERS.get((target.family, target.width)) if target.config is not None else None
        if found is None or not (backend in TORCH_BACKENDS or self._peer_converter(backend)):
            return None
        lib, name = found
        version = _version(lib)
        if version is None:
            return None
        return Cell(target, lib, backend, "fp32", peer=name, identity=f"{lib}:{name}@{version}")

    def key(self, cell: Cell) -> dict:
        """Everything a cell's latency depends on (see ``measure.cache``)."""
        key = {"what": "latency", **machine_key(), "target": cell.identity, "impl": cell.impl,
               "backend": cell.backend, "runtime": runtime_versions().get(cell.backend), "torch": torch.__version__,
               "threads": self.threads, "batch": self.batch, "resolution": cell.target.resolution,
               "precision": cell.precision}
        if self.device != "cpu":
            key["device"] = latency.device_name(self.device)
        if cell.backend == "litert" and not cell.target.is_file:
            key["converter"] = _version("litert-torch")
        return key

    def cached(self, cell: Cell, *, min_runs: int = 1) -> BenchRow | None:
        """The cell's row from the measurement cache (``cached=True``), or None."""
        rec = self.cache.lookup(self.key(cell), min_runs=min_runs)
        if rec is None or rec.timing is None:
            return None
        return self._row(cell, rec, cached=True)

    def _row(self, cell: Cell, rec: Record, *, cached: bool) -> BenchRow:
        x = rec.extra
        macs, params = x.get("macs"), x.get("params")
        return BenchRow(model=cell.target.label, impl=cell.impl, backend=cell.backend, precision=cell.precision,
                        width=cell.target.width, resolution=cell.target.resolution, batch=self.batch,
                        threads=self.threads, macs=macs, params=params, timing=rec.timing,
                        floor_ms=self.floor_ms(macs), peer_model=cell.peer, file=x.get("file"),
                        size_bytes=x.get("size_bytes"), measured_at=rec.measured_at, cached=cached)

    def complexity(self, target: Target) -> tuple[int | None, int | None]:
        """(MACs, params) of ``target``, profiled once and kept in the measurement cache."""
        if target.config is None or target.resolution is None:
            return None, None
        key = {"what": "profile", "target": target.identity, "resolution": target.resolution}
        rec = self.cache.records.get(key_id(key))  # MACs do not change with the machine: never stale
        if rec is None or "macs" not in rec.extra:
            macs, params = target.complexity()
            rec = self.cache.store(key, None, macs=macs, params=params)
        return rec.extra["macs"], rec.extra["params"]

    def record(self, cell: Cell, timing: latency.Timing, file: Path | None, params: int | None = None) -> BenchRow:
        """Store a new figure of ``cell`` in the cache (saved by ``save``) and return its row."""
        macs, own_params = self.complexity(cell.target)
        rec = self.cache.store(self.key(cell), timing, macs=macs, params=params if params is not None else own_params,
                               file=str(file) if file else None, size_bytes=_size_bytes(file),
                               label=cell.label)
        return self._row(cell, rec, cached=False)

    def save(self) -> None:
        self.cache.save()

    # -- sessions -------------------------------------------------------------------------------
    def input(self, cell: Cell) -> np.ndarray:
        res = cell.target.resolution
        chans = cell.target.config.in_chans if cell.target.config is not None else 3
        return np.random.default_rng(0).standard_normal((self.batch, chans, res, res)).astype(np.float32)

    def session(self, cell: Cell):
        """An open session for ``cell``: the exported file itself, or an export from the export
        cache (made now if missing), or the module for torch/compile. ``UsageError`` when the
        backend cannot run it (the caller notes it and goes on)."""
        target = cell.target
        if cell.peer is not None:
            return self._peer_session(cell)
        kw = dict(threads=self.threads, precision=cell.precision, device=self.device)
        if target.is_file:
            return open_session(target.path, cell.backend, **kw)
        if cell.backend in TORCH_BACKENDS:
            return open_session(target.model(), cell.backend, **kw)
        why = RUNTIMES[cell.backend].runs_here()
        if why:
            raise UsageError(why)
        return open_session(self.export_file(cell), cell.backend, **kw)

    def export_dir(self, cell: Cell) -> Path:
        """Where the cached export of a cell lives (TFLite files take NHWC input, LiteRT's own layout)."""
        fmt = EXPORT_FORMAT[cell.backend]
        return (export_cache() / f"{cell.target.identity.replace(':', '-')}-r{cell.target.resolution}"
                / (f"{fmt}-{cell.precision}-b{self.batch}" + ("-nhwc" if by_format(fmt).nhwc else "")))

    def has_export(self, cell: Cell) -> bool:
        """Whether ``cell``'s export is in the export cache already."""
        return (cell.backend in EXPORT_FORMAT and not cell.target.is_file
                and _cached_file(self.export_dir(cell), EXPORT_FORMAT[cell.backend]) is not None)

    def export_file(self, cell: Cell) -> Path:
        """The cached export of ``cell``, made now if missing. An int8 ONNX or OpenVINO file is
        quantized from the fp32 export of the same format (``fp32_source``), not exported from torch again."""
        fmt = EXPORT_FORMAT[cell.backend]
        out_dir = self.export_dir(cell)
        found = _cached_file(out_dir, fmt)
        if found is not None:
            return found
        if cell.precision == "int8" and fmt in QUANTIZE_FROM_FP32:
            return self._quantize_export(cell, fmt, out_dir)
        kwargs: dict = {}
        if cell.precision == "int8":
            kwargs.update(int8=True, calib=self.calibration(cell))
        elif cell.precision != "fp32" and cell.precision in by_format(fmt).export_precisions:
            kwargs.update(precision=cell.precision)  # else an fp32 file, run at the session's precision
        with warnings.catch_warnings():  # converters warn about their own internals (forks, deprecations)
            warnings.simplefilter("ignore")
            result = export(cell.target.model(), fmt, out_dir, batch=self.batch, nhwc=by_format(fmt).nhwc, verify=False,
                            resolution=cell.target.resolution, **kwargs)
        return Path(result.path)

    def calibration(self, cell: Cell) -> np.ndarray:
        """``CALIB_IMAGES`` random NCHW inputs (a timing export's latency does not depend on them)."""
        res, chans = cell.target.resolution, cell.target.config.in_chans
        return np.random.default_rng(0).standard_normal((CALIB_IMAGES, chans, res, res)).astype(np.float32)

    def fp32_source(self, cell: Cell) -> Path:
        """The fp32 file an int8 ONNX/OpenVINO timing export of ``cell`` is quantized from: the cached
        fp32 export of its format; for OpenVINO without one, a cached fp32 ONNX file (NNCF reads
        both); else the fp32 export of its format, made now."""
        fmt = EXPORT_FORMAT[cell.backend]
        own = replace(cell, precision="fp32")
        found = _cached_file(self.export_dir(own), fmt)
        if found is None and fmt == "openvino":
            found = _cached_file(self.export_dir(replace(cell, backend="onnxruntime", precision="fp32")), "onnx")
        return found if found is not None else self.export_file(own)

    def _quantize_export(self, cell: Cell, fmt: str, out_dir: Path) -> Path:
        """``cell``'s int8 file, quantized from ``fp32_source`` with ``deploy.quantize.quantize_file``
        and published into ``out_dir`` (weights and sidecar before the file that names them)."""
        src = self.fp32_source(cell)
        suffix = EXPORT_SUFFIX[fmt]
        name = src.stem.replace("-fp32", "-int8").replace("-onnx-", f"-{fmt}-") if "-fp32" in src.stem \
            else f"{src.stem}-int8"
        meta = json.loads(sidecar_of(src).read_text()) if sidecar_of(src).is_file() else {}
        meta.update(precision="int8", export_format=fmt, backend=cell.backend)
        with staging_dir(out_dir) as work, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tmp = work / f"{name}{suffix}"
            quantize_file(fmt, src, tmp, self.calibration(cell))
            write_sidecar(tmp, meta)
            dst = out_dir / tmp.name
            for companion in by_format(fmt).companions:
                publish(tmp.with_suffix(companion), dst.with_suffix(companion))
            publish(sidecar_of(tmp), sidecar_of(dst))
            publish(tmp, dst)
        return dst

    def peer(self, target: Target) -> tuple[str, str, nn.Module] | None:
        key = (target.family, target.width)
        if key not in self._peers:
            self._peers[key] = peer_module(*key)
        return self._peers[key]

    @staticmethod
    def _peer_converter(backend: str):
        """How a peer's users make a file for ``backend``: its runtime's own way (``Runtime.peer_convert``),
        or the ONNX file a runtime of ONNX files opens (openvino, tensorrt)."""
        runtime = RUNTIMES[backend]
        if runtime.peer_convert is not None:
            return runtime.peer_convert, runtime.suffix
        if ".onnx" in runtime.opens:
            return peer_onnx, ".onnx"
        return None

    def _peer_session(self, cell: Cell):
        """A peer on ``cell.backend``: eager/compiled as is, or exported the way its users export it
        (``Runtime.peer_convert``: plain ``torch.onnx.export``, ``litert_torch.convert``, ExecuTorch's
        XNNPACK tutorial), cached by the peer's identity."""
        found = self.peer(cell.target)
        if found is None:
            raise UsageError(f"{cell.peer} is not available")
        _, name, module = found
        kw = dict(threads=self.threads, precision="fp32", device=self.device)
        if cell.backend in TORCH_BACKENDS:
            return open_session(module, cell.backend, **kw)
        convert, suffix = self._peer_converter(cell.backend)
        res = cell.target.resolution
        example = torch.randn(self.batch, 3, res, res)
        base = export_cache() / cell.identity.replace(":", "-").replace("@", "-") / f"r{res}-b{self.batch}"
        path = base / f"model{suffix}"
        if not path.is_file():
            with atomic_path(path) as tmp, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                convert(module, example, tmp)
        return open_session(path, cell.backend, **kw)

    def peer_params(self, cell: Cell) -> int | None:
        found = self.peer(cell.target)
        return sum(p.numel() for p in found[2].parameters()) if found else None


def _cached_file(out_dir: Path, fmt: str) -> Path | None:
    suffix = EXPORT_SUFFIX[fmt]
    files = sorted(out_dir.glob(f"*{suffix}")) if out_dir.is_dir() else []
    return files[0] if files else None


def peer_module(family: str, width: float) -> tuple[str, str, nn.Module] | None:
    """(library, name, module) of the peer implementation of ``family`` at ``width``, if installed."""
    found = PEERS.get((family, width))
    if found is None:
        return None
    lib, name = found
    try:
        if lib == "torchvision":
            # Imported here: only --peers needs torchvision's models, whose import pulls in torch._dynamo
            # (about two seconds at every start of the CLI otherwise).
            import torchvision
            return lib, name, getattr(torchvision.models, name)().eval()
        import timm
        return lib, name, timm.create_model(name, pretrained=False).eval()
    except ImportError:
        return None


def check_settings(*, threads: int = 1, batch: int = 1, iters: int = 1, warmup: int = 0,
                   precisions: Sequence[str] = ("fp32",)) -> None:
    for n, what in ((threads, "threads"), (batch, "batch"), (iters, "iters")):
        if n < 1:
            raise UsageError(f"{what} must be >= 1, got {n}")
    if warmup < 0:
        raise UsageError(f"warmup must be >= 0, got {warmup}")
    bad = [p for p in precisions if p not in ("fp32", "bf16", "fp16", "int8")]
    if bad:
        raise UsageError(f"unknown precision {bad[0]!r}; known: fp32, bf16, fp16, int8")


def bench(models: Sequence, *, backends: Sequence[str] | None = None, precisions: Sequence[str] = ("fp32",),
          threads: int = 1, batch: int = 1, resolution: int | None = None, warmup: int = 50, iters: int = 1000,
          rounds: int = 10, peers: bool = False, fresh: bool = False, cache: MeasurementCache | None = None,
          progress: Progress | None = None, device: str = "cpu") -> BenchReport:
    """Time every (target, backend, precision) cell, peers included when asked; see the module doc.
    Cells found in the measurement cache (with at least ``iters`` runs) are read back, not timed."""
    if not models:
        raise UsageError("name at least one model (see `mobilenets list`)")
    check_settings(threads=threads, batch=batch, iters=iters, warmup=warmup, precisions=precisions)
    device = str(resolve_device(device or "cpu"))  # "auto": CUDA when this machine has it
    use, skipped = installed_backends(backends, device)
    if not use:
        raise UsageError("none of the requested backends is installed: " + "; ".join(skipped))
    targets = [resolve_target(m, resolution) for m in models]
    precisions = list(precisions)
    if "bf16" in precisions and not cpu_has_bf16():
        skipped.append("bf16: this CPU has no native bf16 (avx512_bf16/amx_bf16)")
        precisions = [p for p in precisions if p != "bf16"]
    b = Bench(threads=threads, batch=batch, cache=cache, fresh=fresh, progress=progress, device=device)
    cells = plan(targets, use, precisions, peers=peers, explicit_backends=backends is not None, bench=b,
                 skipped=skipped)
    rows = measure_interleaved(b, cells, warmup=warmup, iters=iters, rounds=rounds, skipped=skipped)
    report = BenchReport(rows, latency.machine_info(),
                         dict(models=[t.label for t in targets], backends=use, precisions=precisions, threads=threads,
                              batch=batch, resolution=resolution, warmup=warmup, iters=iters, rounds=rounds,
                              peers=peers, fresh=fresh, gemm_gflops=b.gemm_flops() / 1e9, device=device),
                         skipped=skipped)
    for r in rows:
        if r.timing.noisy and not r.cached:
            report.warnings.append(f"{r.model} {r.impl} {r.backend} {r.precision}: spread "
                                   f"{r.timing.spread:.0%} of the median; the machine is noisy, rerun for a "
                                   f"firmer figure")
    return report


def plan(targets: Sequence[Target], backends: Sequence[str], precisions: Sequence[str], *, peers: bool,
         explicit_backends: bool, bench: Bench, skipped: list[str]) -> list[Cell]:
    """The grid: each model on each backend x precision it supports, its peer beside it; an exported
    file on the backends that run it (its own runtime unless backends were named), at its precision."""
    cells: list[Cell] = []
    for t in targets:
        if t.is_file:
            able = FILE_BACKENDS[t.path.suffix.lower()]
            on = [b for b in backends if b in able] if explicit_backends else [b for b in able[:1]
                                                                                 if b in backends]
            if not on:
                skipped.append(f"{t.label}: none of the backends runs {t.path.suffix} files "
                               f"(runs on {', '.join(able)})")
            cells += [bench.cell(t, b, t.precision) for b in on]
            continue
        for backend in backends:
            for precision in precisions:
                if precision in SUPPORTED[backend]:
                    cells.append(bench.cell(t, backend, precision))
            if peers and "fp32" in precisions:
                pc = bench.peer_cell(t, backend)
                if pc is not None:
                    cells.append(pc)
    return cells


def measure_interleaved(b: Bench, cells: Sequence[Cell], *, warmup: int, iters: int, rounds: int,
                        skipped: list[str]) -> list[BenchRow]:
    """Rows of ``cells``: read back from the cache, or prepared (exported, opened) and then timed
    together in interleaved rounds, and stored."""
    rows: dict[Cell, BenchRow] = {}
    todo = []
    for c in cells:
        row = b.cached(c, min_runs=iters)
        if row is not None:
            rows[c] = row
        else:
            todo.append(c)
    total = 2 * len(todo)
    runners, files = {}, {}
    for i, c in enumerate(todo):
        b.progress(f"preparing {c.label}", i, total)
        try:
            s = b.session(c)
        except UsageError as exc:
            skipped.append(f"{c.label}: {exc}")
            continue
        runners[c], files[c] = s.runner(b.input(c)), getattr(s, "path", None)
    if runners:
        torch.set_num_threads(b.threads)
        n = len(runners)

        def on_round(r: int) -> None:
            b.progress(f"timing {n} sessions", len(todo) + n * (r + 1) / rounds, total)

        b.progress(f"timing {n} sessions", len(todo), total)
        timings = latency.interleaved(runners, warmup=warmup, iters=iters, rounds=rounds, batch=b.batch,
                                      on_round=on_round)
        for c, t in timings.items():
            rows[c] = b.record(c, t, files[c], params=b.peer_params(c) if c.peer else None)
        b.save()
    return [rows[c] for c in cells if c in rows]
