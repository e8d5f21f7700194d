"""Download checkpoints into a cache, verified, never leaving a half-written file behind.

A download is verified against the strongest digest its publisher gives (``hash_kind``): a full
sha256, else the sha256 prefix of a torch.hub file name, else an md5; a file with none is
downloaded unverified. It streams into ``<name>.<random>.part`` beside its target while hashing,
and is renamed into place only when complete and verified: an interrupted or corrupt download
cannot be mistaken for a good file later. The cache is ``$MOBILENETS_HOME`` or
``<torch hub dir>/mobilenets`` (so ``TORCH_HOME`` moves it too). Any URL urllib opens works,
``file://`` included, which is how the tests and air-gapped mirrors use it.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

import torch.hub
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

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
    return Path(torch.hub.get_dir()) / "mobilenets"


def _one_line(x: object) -> str:
    return " ".join(str(x).split())


def hash_kind(sha256: str | None = None, md5: str | None = None) -> str:
    """Which digest a download is verified against: the strongest given. ``"sha256"`` (all 64 hex
    digits), ``"sha256-prefix"`` (torch.hub's convention: the first 8+ hex digits of the sha256 in the
    file name, checked as ``torch.hub.check_hash`` does), ``"md5"``, or ``"none"``."""
    if sha256:
        if not _is_hex(sha256, 8, 64):
            raise ValueError(f"sha256 must be 8 to 64 hex digits, got {sha256!r}")
        return "sha256" if len(sha256) == 64 else "sha256-prefix"
    if md5:
        if not _is_hex(md5, 32, 32):
            raise ValueError(f"md5 must be 32 hex digits, got {md5!r}")
        return "md5"
    return "none"


def _is_hex(text: str, shortest: int, longest: int) -> bool:
    return shortest <= len(text) <= longest and all(c in "0123456789abcdef" for c in text.lower())


def check_digest(path: Path, sha256: str | None = None, md5: str | None = None) -> str | None:
    """None when ``path`` matches the strongest digest given (see ``hash_kind``), else a one-line
    description of the mismatch."""
    hasher = _hasher(sha256, md5)
    if hasher is None:
        return None
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            hasher.update(chunk)
    return _compare(hasher, sha256, md5)


def _hasher(sha256: str | None, md5: str | None):
    kind = hash_kind(sha256, md5)
    if kind == "none":
        return None
    return hashlib.md5(usedforsecurity=False) if kind == "md5" else hashlib.sha256()


def _compare(hasher, sha256: str | None, md5: str | None) -> str | None:
    got = hasher.hexdigest()
    want = (sha256 or md5 or "").lower()
    if got.startswith(want) if sha256 else got == want:
        return None
    return f"{hasher.name} {got} does not match the expected {sha256 or md5}"


def download(url: str, dest: str | os.PathLike, *, sha256: str | None = None, md5: str | None = None,
             progress: bool | None = None) -> Path:
    """Fetch ``url`` to ``dest`` atomically, verified against the strongest digest given (a full
    sha256, else a sha256 prefix, else md5; see ``hash_kind``).

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
        hasher = _hasher(sha256, md5)
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
                if hasher is not None:
                    hasher.update(chunk)
                advance(len(chunk))
        mismatch = _compare(hasher, sha256, md5) if hasher is not None else None
        if mismatch:
            raise UsageError(f"{url}: {mismatch}; the download was deleted")
    return dest


def fetch(url: str, filename: str, *, sha256: str | None = None, md5: str | None = None,
          progress: bool | None = None) -> Path:
    """The cached copy of ``url`` (downloading it when absent). A cached file that fails its
    digest, e.g. one placed by hand, is deleted and downloaded again."""
    dest = cache_dir() / filename
    if dest.is_file():
        mismatch = check_digest(dest, sha256, md5)
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
        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                  TransferSpeedColumn(), TimeRemainingColumn(), console=Console(stderr=True))
        self._progress.start()
        task = self._progress.add_task(self.name, total=self.total)
        return lambda n: self._progress.advance(task, n)

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.stop()
        return False
