"""One cache of measurements for ``bench``, ``zoo`` and ``select``: measured once per machine.

A record is one latency figure (a ``Timing``) and the date it was measured, under a key that says
everything the figure depends on: the CPU model, the runtime and its version, threads, batch,
resolution, precision and the identity of what was timed (an architecture's config hash, or an
exported file's content hash). The machine's fp32 GEMM throughput (the compute floor) is kept
here too. A key that matches is a figure that would be measured again; anything that changes the
figure changes the key, so an upgrade of a runtime measures afresh.

The cache is one JSON file, ``<cache dir>/measurements.json`` (``$MOBILENETS_HOME``, see
``weights.hub.cache_dir``), written atomically; a record from another process written in the
meantime is kept (the file is re-read and merged before each write). A damaged file is ignored
and replaced. ``fresh=True`` (the verbs' ``--fresh``) measures everything again and overwrites.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..core.files import atomic_write_text
from ..core.hardware import cpu_model
from ..weights.hub import cache_dir
from .latency import Timing

FILE_NAME = "measurements.json"
FORMAT = 1


def default_path() -> Path:
    return cache_dir() / FILE_NAME


def key_id(key: dict) -> str:
    """A stable id for ``key`` (a JSON-able dict): the hash of its sorted JSON."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]


def machine_key() -> dict:
    """What identifies the machine in every key: its CPU model and core count."""
    return {"cpu": cpu_model(), "cores": os.cpu_count()}


def today() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


@dataclass
class Record:
    key: dict
    timing: Timing | None
    measured_at: str
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"key": self.key, "timing": self.timing.to_dict() if self.timing else None,
                "measured_at": self.measured_at, "extra": self.extra}

    @classmethod
    def from_dict(cls, d: dict) -> Record:
        t = d.get("timing")
        return cls(dict(d["key"]), Timing.from_dict(t) if t else None, str(d["measured_at"]),
                   dict(d.get("extra") or {}))


class MeasurementCache:
    """Records by key id, loaded from ``path`` (default ``default_path()``); ``fresh``: every lookup
    misses, so everything is measured again (and the new figures replace the old)."""

    def __init__(self, path: str | os.PathLike | None = None, *, fresh: bool = False):
        self.path = Path(path) if path is not None else default_path()
        self.fresh = fresh
        self.records: dict[str, Record] = self._read()
        self._dirty: set[str] = set()

    def _read(self) -> dict[str, Record]:
        try:
            data = json.loads(self.path.read_text())
            if data.get("format") != FORMAT:
                return {}
            return {k: Record.from_dict(v) for k, v in data["records"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return {}  # no cache yet, or a damaged one: it is only a cache

    def lookup(self, key: dict, *, min_runs: int = 1) -> Record | None:
        """The record of ``key`` if there is one with at least ``min_runs`` timed runs (a quick figure
        does not stand in for a request of a longer measurement); None under ``fresh``."""
        if self.fresh:
            return None
        rec = self.records.get(key_id(key))
        if rec is None or (rec.timing is not None and rec.timing.runs < min_runs):
            return None
        return rec

    def store(self, key: dict, timing: Timing | None, **extra) -> Record:
        rec = Record(dict(key), timing, today(), extra)
        kid = key_id(key)
        self.records[kid] = rec
        self._dirty.add(kid)
        return rec

    def save(self) -> Path | None:
        """Write the records stored since the last save, merged into the file as it is now."""
        if not self._dirty:
            return None
        on_disk = self._read()
        on_disk.update({k: self.records[k] for k in self._dirty})
        self.records = {**self.records, **on_disk}
        payload = {"format": FORMAT, "records": {k: r.to_dict() for k, r in on_disk.items()}}
        atomic_write_text(self.path, json.dumps(payload, indent=1))
        self._dirty.clear()
        return self.path
