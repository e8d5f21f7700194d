"""Keep freed memory in the process during CPU training (glibc ``mallopt``).

A training step frees and re-allocates the same large activation buffers every step. glibc's
defaults hand blocks above its mmap threshold back to the kernel when they are freed, and the
next step faults them back in page by page, its time spent in the kernel zeroing pages
(``benchmarks/train_throughput.py`` measures the cost). Serving every allocation from the heap
and never trimming it keeps the pages mapped; the process keeps its peak footprint instead.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's <malloc.h>


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory for reuse (this process, from now on); False where
    that is not possible (not Linux, not glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
