"""Atomic writes. A reader never sees half a checkpoint, export or results file: everything is
written beside its destination under a hidden name, fsynced and renamed onto it. Files get the
permissions a plain ``open(path, "w")`` would give (0666 less the umask), not ``mkstemp``'s 0600.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import UsageError

STAGING_PREFIX = ".staging-"
STALE_AFTER_S = 3600.0  # a staging folder this old belongs to a killed process


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Outputs that are folders written as one unit (a Core ML package): replaced whole by ``publish``.
PACKAGE_SUFFIXES = frozenset({".mlpackage"})


def check_parent(path: str | os.PathLike) -> Path:
    """``path``, after checking that its folder is (or can be made) a folder: an output under an
    existing *file* is a ``UsageError`` naming it, before any slow work starts."""
    path = Path(path)
    for parent in [path.parent, *path.parent.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"cannot write {path}: {parent} is a file, not a folder")
            break
    if path.is_dir() and path.suffix.lower() not in PACKAGE_SUFFIXES:
        raise UsageError(f"cannot write {path}: it is a folder")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """A temporary file name beside ``path`` (``path``'s suffix unless ``suffix`` is given) for
    writers that take a name (``savefig``, ``torch.onnx.export``, a download): fsynced and renamed
    onto ``path`` when the block ends, removed if it raises."""
    path = check_parent(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix if suffix is None else suffix,
                                dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temp file in the same directory + fsync + rename."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, text.encode())


def clean_stale_staging(folder: str | os.PathLike, older_than_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove staging folders left in ``folder`` by processes killed mid-write (SIGKILL runs no
    cleanup); returns what was removed. Fresh ones may belong to a writer still at work."""
    folder, removed, now = Path(folder), [], time.time()
    if not folder.is_dir():
        return removed
    for p in folder.glob(f"{STAGING_PREFIX}*"):
        try:
            if p.is_dir() and now - p.stat().st_mtime > older_than_s:
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
        except OSError:
            continue
    return removed


@contextlib.contextmanager
def staging_dir(out_dir: str | os.PathLike) -> Iterator[Path]:
    """A hidden folder inside ``out_dir`` to build a multi-file result in (an OpenVINO IR, a model
    repository); the caller moves the finished files out with ``publish``. Removed on exit, also
    when the block raises; stale ones of killed processes are cleaned first."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"cannot write into {out_dir}: it is a file, not a folder")
    check_parent(out_dir / "x")
    out_dir.mkdir(parents=True, exist_ok=True)
    clean_stale_staging(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out_dir))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Move a finished file (or package folder, e.g. a Core ML ``.mlpackage``) from a staging folder
    onto ``dst`` atomically (same file system), with the umask's permissions. A folder replaces an
    existing one by two renames: readers see the old or the new one, never a mix."""
    src, dst = Path(src), Path(dst)
    if src.is_dir():
        for f in [src, *src.rglob("*")]:
            os.chmod(f, (0o777 if f.is_dir() else 0o666) & ~_umask())
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        old = None
        if dst.exists():
            old = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=dst.parent)) / "old"
            os.replace(dst, old)
        os.replace(src, dst)
        if old is not None:
            shutil.rmtree(old.parent, ignore_errors=True)
        return dst
    with open(src, "rb") as f:
        os.fsync(f.fileno())
    os.chmod(src, 0o666 & ~_umask())
    os.replace(src, dst)
    return dst
