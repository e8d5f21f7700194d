"""What this machine can do: the device to run on, bf16 support, the C++ compiler Inductor
would use, the CPU's name. Probes only; no policy."""
from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

import torch

from .errors import UsageError

DEVICE_KINDS = ("auto", "cpu", "cuda", "mps")


def resolve_device(requested: str | None = "auto", local_rank: int = 0) -> torch.device:
    """The device for ``requested`` ("auto": the first CUDA GPU of this process, else the CPU).
    An unknown device or one this machine lacks is a ``UsageError`` naming what it has."""
    requested = (requested or "auto").strip()
    if requested == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(requested)
    except (RuntimeError, ValueError):
        raise UsageError(f"unknown device {requested!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {requested}: this machine has no CUDA GPU (use --device cpu or auto)")
        count = torch.cuda.device_count()
        index = local_rank if dev.index is None else dev.index
        if index >= count:
            raise UsageError(f"--device {requested}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
        return torch.device("cuda", index)
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError(f"--device {requested}: MPS is not available on this machine")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"unsupported device {requested!r}: use auto, cpu, cuda, cuda:N or mps")
    return dev


@functools.cache
def cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_bf16() -> bool:
    """AVX512-BF16 or AMX-BF16: bf16 arithmetic that is faster than fp32, not emulated."""
    flags = cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_bf16()


@functools.cache
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cxx_compiler() -> str | None:
    """The C++ compiler ``torch.compile`` would build CPU kernels with, found by Inductor's own search
    (``torch._inductor.config.cpp.cxx``: ``$CXX`` or g++), or None."""
    from torch._inductor import exc  # Inductor is heavy to import; only --compile needs it
    from torch._inductor.cpp_builder import get_cpp_compiler
    try:
        return get_cpp_compiler()
    except exc.InvalidCxxCompiler:
        return None


def process_age_s() -> float:
    """Seconds since this process started (interpreter start-up and imports included), from
    ``/proc`` on Linux; 0 where that cannot be read."""
    try:
        start_ticks = float(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0
