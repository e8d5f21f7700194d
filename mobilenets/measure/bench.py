"""``mobilenets bench``: latency of our models on every installed runtime, peers beside them.

A bench is a grid: models x backends x precisions, each cell a ``Session`` (see
``mobilenets.deploy.runtimes``) on a cached export, all timed together by
``latency.interleaved``. With ``peers=True`` the same architecture from torchvision or timm
joins the grid on the same backends (exported the way their users export it: plain
``torch.onnx.export``), so every figure has a ratio beside it. Latency does not depend on the
weights' values, so models are randomly initialised and nothing is downloaded; int8 exports
are calibrated on random inputs for the same reason (their accuracy is measured elsewhere).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core.errors import UsageError
from ..core.files import atomic_path, atomic_write
from ..models import get_variant
from ..weights import create_model
from . import latency

# What each backend can run. bf16 only where the CPU has native bf16 (checked at run time).
SUPPORTED = {"torch": ("fp32", "bf16"), "compile": ("fp32", "bf16"), "onnxruntime": ("fp32", "int8"),
             "openvino": ("fp32", "bf16", "int8"), "litert": ("fp32", "int8")}
EXPORT_FORMAT = {"onnxruntime": "onnx", "openvino": "openvino", "litert": "tflite"}
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


@dataclass
class BenchRow:
    model: str
    impl: str                  # "mobilenets", or the peer's library: "torchvision", "timm"
    backend: str
    precision: str
    width: float
    resolution: int
    batch: int
    threads: int
    macs: int
    params: int
    timing: latency.Timing
    floor_ms: float | None = None    # fp32 compute floor on ``threads`` cores
    peer_model: str | None = None
    file: str | None = None          # the exported file timed (None: a PyTorch module)

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

    def write_json(self, path: str | os.PathLike) -> Path:
        return atomic_write(Path(path), json.dumps(self.to_dict(), indent=1).encode())

    def write_csv(self, path: str | os.PathLike) -> Path:
        cols = ["model", "impl", "backend", "precision", "width", "resolution", "batch", "threads", "macs", "params",
                "median_ms", "mean_ms", "p10_ms", "p90_ms", "spread", "throughput", "floor_ms"]
        lines = [",".join(cols)]
        for r in self.rows:
            t = r.timing.to_dict()
            vals = {**asdict(r), **t}
            lines.append(",".join("" if vals.get(c) is None else str(vals[c]) for c in cols))
        return atomic_write(Path(path), ("\n".join(lines) + "\n").encode())


def export_cache() -> Path:
    from ..weights.hub import cache_dir
    return cache_dir() / "exports"


def installed_backends(requested: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """(usable backends, notes about requested ones that are not installed)."""
    from ..deploy.runtimes import BACKENDS, available_backends
    have = available_backends()
    if requested is None:
        return [b for b in BACKENDS if have.get(b) and b != "compile"], []
    unknown = [b for b in requested if b not in BACKENDS]
    if unknown:
        raise UsageError(f"unknown backend {unknown[0]!r}; known: {', '.join(BACKENDS)}")
    missing = [f"backend {b} is not installed" for b in requested if not have.get(b)]
    return [b for b in requested if have.get(b)], missing


def _ours_session(model: torch.nn.Module, key: str, backend: str, precision: str, threads: int, batch: int,
                  resolution: int):
    from ..deploy.runtimes import open_session
    if backend in ("torch", "compile"):
        return open_session(model, backend, threads=threads, precision=precision)
    fmt = EXPORT_FORMAT[backend]
    nhwc = fmt == "tflite"  # LiteRT's native layout: no TRANSPOSE at the input
    out_dir = export_dir(key, fmt, precision, batch)
    found = _cached_file(out_dir, fmt)
    if found is None:
        from ..deploy.export import export
        kwargs = {}
        if precision == "int8":
            rng = np.random.default_rng(0)
            kwargs.update(int8=True, calib=rng.standard_normal((32, 3, resolution, resolution)).astype(np.float32))
        elif precision == "bf16":
            kwargs.update(precision="bf16")
        out_dir.mkdir(parents=True, exist_ok=True)
        found = Path(export(model, fmt, out_dir, batch=batch, nhwc=nhwc, verify=precision == "fp32", **kwargs).path)
    return open_session(found, backend, threads=threads, precision=precision)


def export_dir(key: str, fmt: str, precision: str, batch: int) -> Path:
    """Where the cached export of one bench cell lives (TFLite files take NHWC input)."""
    return export_cache() / key / (f"{fmt}-{precision}-b{batch}" + ("-nhwc" if fmt == "tflite" else ""))


def _cached_file(out_dir: Path, fmt: str) -> Path | None:
    suffix = {"onnx": ".onnx", "openvino": ".xml", "tflite": ".tflite"}[fmt]
    files = sorted(out_dir.glob(f"*{suffix}")) if out_dir.is_dir() else []
    return files[0] if files else None


def peer_module(family: str, width: float) -> tuple[str, str, torch.nn.Module] | None:
    """(library, name, module) of the peer implementation of ``family`` at ``width``, if installed."""
    found = PEERS.get((family, width))
    if found is None:
        return None
    lib, name = found
    try:
        if lib == "torchvision":
            import torchvision
            return lib, name, getattr(torchvision.models, name)().eval()
        import timm
        return lib, name, timm.create_model(name, pretrained=False).eval()
    except ImportError:
        return None


def _peer_session(module: torch.nn.Module, key: str, backend: str, precision: str, threads: int, batch: int,
                  resolution: int):
    """A peer on ``backend``: eager/compiled as is, or exported the way its users export it (plain
    ``torch.onnx.export`` for ONNX Runtime and OpenVINO, ``litert_torch.convert`` for LiteRT)."""
    from ..deploy.runtimes import open_session
    if backend in ("torch", "compile"):
        return open_session(module, backend, threads=threads, precision=precision)
    if backend not in ("onnxruntime", "openvino", "litert") or precision != "fp32":
        return None
    example = torch.randn(batch, 3, resolution, resolution)
    if backend == "litert":  # the LiteRT user's path: litert-torch straight from the module
        path = export_cache() / key / f"peer-tflite-b{batch}" / "model.tflite"
        if not path.is_file():
            import litert_torch
            with atomic_path(path) as tmp, warnings.catch_warnings(), \
                    contextlib.redirect_stdout(io.StringIO()):  # its progress log
                warnings.simplefilter("ignore")
                litert_torch.convert(module, (example,)).export(str(tmp))
        return open_session(path, backend, threads=threads, precision="fp32")
    path = export_cache() / key / f"peer-onnx-b{batch}" / "model.onnx"
    if not path.is_file():
        with atomic_path(path) as tmp, torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, example, tmp, opset_version=17, dynamo=False, input_names=["input"],
                              output_names=["logits"])
    return open_session(path, backend, threads=threads, precision="fp32")


def _key(*parts) -> str:
    return "-".join(str(p) for p in parts[:4]) + "-" + hashlib.sha1(repr(parts).encode()).hexdigest()[:8]


def bench(models: Sequence[str], *, backends: Sequence[str] | None = None, precisions: Sequence[str] = ("fp32",),
          threads: int = 1, batch: int = 1, resolution: int | None = None, warmup: int = 50, iters: int = 1000,
          rounds: int = 10, peers: bool = False, status: Callable[[str], None] | None = None) -> BenchReport:
    """Time every (model, backend, precision) cell, peers included when asked; see the module doc."""
    from ..measure.profile import profile
    if not models:
        raise UsageError("name at least one model (see `mobilenets list`)")
    for n, what in ((threads, "threads"), (batch, "batch"), (iters, "iters")):
        if n < 1:
            raise UsageError(f"{what} must be >= 1, got {n}")
    if warmup < 0:
        raise UsageError(f"warmup must be >= 0, got {warmup}")
    bad = [p for p in precisions if p not in ("fp32", "bf16", "int8")]
    if bad:
        raise UsageError(f"unknown precision {bad[0]!r}; known: fp32, bf16, int8")
    use, skipped = installed_backends(backends)
    if not use:
        raise UsageError("none of the requested backends is installed: " + "; ".join(skipped))
    if "bf16" in precisions and not latency.has_bf16():
        skipped.append("bf16: this CPU has no native bf16 (avx512_bf16/amx_bf16)")
        precisions = [p for p in precisions if p != "bf16"]
    say = status or (lambda s: None)
    torch.set_num_threads(threads)
    runners, rows_meta = {}, {}
    for name in models:
        variant = get_variant(name)
        model = create_model(name, resolution=resolution).eval()
        res = model.config.resolution
        prof = profile(model, name=name)
        xin = np.random.default_rng(0).standard_normal((batch, 3, res, res)).astype(np.float32)
        key = _key(name, res, model.config.width, "ours")
        floor = latency.compute_floor_ms(prof.macs, threads)
        meta = dict(model=name, width=model.config.width, resolution=res, batch=batch, threads=threads,
                    macs=prof.macs, params=prof.params, floor_ms=floor)
        peer = peer_module(variant.family, model.config.width) if peers else None
        for backend in use:
            for precision in precisions:
                if precision not in SUPPORTED[backend]:
                    continue
                say(f"preparing {name} on {backend} {precision}")
                try:
                    s = _ours_session(model, key, backend, precision, threads, batch, res)
                except UsageError as exc:
                    skipped.append(f"{name} {backend} {precision}: {exc}")
                    continue
                runners[(name, "mobilenets", backend, precision)] = _runner(s, xin)
                rows_meta[(name, "mobilenets", backend, precision)] = dict(
                    meta, impl="mobilenets", file=str(s.path) if getattr(s, "path", None) else None)
                if peer is not None:
                    lib, pname, module = peer
                    ps = _peer_session(module, _key(pname, res, batch, "peer"), backend, precision, threads, batch,
                                       res)
                    if ps is None:
                        continue
                    runners[(name, lib, backend, precision)] = _runner(ps, xin)
                    rows_meta[(name, lib, backend, precision)] = dict(
                        meta, impl=lib, peer_model=pname, params=sum(p.numel() for p in module.parameters()))
    say(f"timing {len(runners)} sessions: {warmup} warm-up + {iters} runs each, {rounds} interleaved rounds")
    timings = latency.interleaved(runners, warmup=warmup, iters=iters, rounds=rounds, batch=batch,
                                  on_round=lambda r: say(f"round {r + 1}/{rounds}"))
    rows = [BenchRow(backend=k[2], precision=k[3], timing=timings[k], **rows_meta[k]) for k in runners]
    report = BenchReport(rows, latency.machine_info(),
                         dict(models=list(models), backends=use, precisions=list(precisions), threads=threads,
                              batch=batch, resolution=resolution, warmup=warmup, iters=iters, rounds=rounds,
                              peers=peers, torch_threads=torch.get_num_threads()),
                         skipped=skipped)
    for r in rows:
        if r.timing.noisy:
            report.warnings.append(f"{r.model} {r.impl} {r.backend} {r.precision}: spread "
                                   f"{r.timing.spread:.0%} of the median; the machine is noisy, rerun for a "
                                   f"firmer figure")
    return report


def _runner(session, x: np.ndarray):
    """Time the runtime call itself: the input is prepared once in the session's own layout
    (an NHWC file gets NHWC images, as an image pipeline hands them over)."""
    return session.runner(x)
