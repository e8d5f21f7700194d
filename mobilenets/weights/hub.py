"""Download checkpoints into a cache, verified, never leaving a half-written file behind.

The cache is ``$MOBILENETS_HOME`` or ``<torch hub dir>/mobilenets`` (so ``TORCH_HOME`` moves
it too). A download streams into ``<name>.<random>.part`` beside its target while hashing,
and is renamed into place only when complete and verified: an interrupted or corrupt
download cannot be mistaken for a good file later. Any URL urllib opens works, ``file://``
included, which is how the tests and air-gapped mirrors use it.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from ..core.errors import UsageError
from ..core.files import atomic_path

CHUNK = 1 << 20
TIMEOUT_S = 30
USER_AGENT = "mobilenets (python urllib)"


def cache_dir() -> Path:
    """Where checkpoints are kept: ``$MOBILENETS_HOME`` else ``torch.hub.get_dir()/mobilenets``."""
    home = os.environ.get("MOBILENETS_HOME")
    if home:
        return Path(home).expanduser()
    import torch.hub
    return Path(torch.hub.get_dir()) / "mobilenets"


def _one_line(x: object) -> str:
    return " ".join(str(x).split())


def check_digest(path: Path, sha256: str | None = None, md5: str | None = None) -> str | None:
    """None when ``path`` matches the expected digests, else a one-line description of the
    mismatch. ``sha256`` may be a prefix (torch.hub file-name convention)."""
    hashers = _hashers(sha256, md5)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            for h in hashers.values():
                h.update(chunk)
    return _compare(hashers, sha256, md5)


def _hashers(sha256: str | None, md5: str | None) -> dict:
    out = {"sha256": hashlib.sha256()}
    if md5:
        out["md5"] = hashlib.md5(usedforsecurity=False)
    return out


def _compare(hashers: dict, sha256: str | None, md5: str | None) -> str | None:
    got = hashers["sha256"].hexdigest()
    if sha256 and not got.startswith(sha256.lower()):
        return f"sha256 {got} does not match the expected {sha256}"
    if md5 and hashers["md5"].hexdigest() != md5.lower():
        return f"md5 {hashers['md5'].hexdigest()} does not match the expected {md5}"
    return None


def download(url: str, dest: str | os.PathLike, *, sha256: str | None = None, md5: str | None = None,
             progress: bool | None = None) -> Path:
    """Fetch ``url`` to ``dest`` atomically, verifying sha256 (full or prefix) and md5 if given.

    Offline or a missing URL: ``UsageError`` naming the URL and where to put the file by hand.
    A digest mismatch deletes the download and raises. ``progress=None``: a bar on a terminal.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    by_hand = f"download it by hand and place it at {dest}"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": USER_AGENT}),
                                          timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        raise UsageError(f"could not download {url}: HTTP {exc.code} {_one_line(exc.reason)}; {by_hand}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UsageError(f"could not download {url} ({_one_line(reason)}); {by_hand}") from None
    with atomic_path(dest, suffix=".part") as tmp, response, open(tmp, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        hashers = _hashers(sha256, md5)
        with _progress_bar(dest.name, total, progress) as advance:
            while True:
                try:
                    chunk = response.read(CHUNK)
                except (OSError, http.client.HTTPException) as exc:
                    raise UsageError(f"download of {url} broke off ({_one_line(exc)}); "
                                     f"try again or {by_hand}") from None
                if not chunk:
                    break
                out.write(chunk)
                for h in hashers.values():
                    h.update(chunk)
                advance(len(chunk))
        mismatch = _compare(hashers, sha256, md5)
        if mismatch:
            raise UsageError(f"{url}: {mismatch}; the download was deleted")
    return dest


def fetch(url: str, filename: str, *, sha256: str | None = None, md5: str | None = None,
          progress: bool | None = None) -> Path:
    """The cached copy of ``url`` (downloading it when absent). A cached file that fails its
    digest, e.g. one placed by hand, is deleted and downloaded again."""
    dest = cache_dir() / filename
    if dest.is_file():
        mismatch = check_digest(dest, sha256, md5) if (sha256 or md5) else None
        if mismatch is None:
            return dest
        dest.unlink()
        print(f"deleted {dest}: {mismatch}; downloading it again", file=sys.stderr)
    return download(url, dest, sha256=sha256, md5=md5, progress=progress)


class _progress_bar:
    """A rich download bar on stderr when ``enabled`` (None: only on a terminal)."""

    def __init__(self, name: str, total: int | None, enabled: bool | None):
        self.name, self.total = name, total
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._progress = None

    def __enter__(self):
        if not self.enabled:
            return lambda n: None
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                  TransferSpeedColumn(), TimeRemainingColumn(), console=Console(stderr=True))
        self._progress.start()
        task = self._progress.add_task(self.name, total=self.total)
        return lambda n: self._progress.advance(task, n)

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.stop()
        return False
