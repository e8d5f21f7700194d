"""Run state for resuming: one atomic file per epoch with everything a replay needs.

``state.pt`` holds the model, EMA, optimizer, step, epoch, best metric, metrics so far and
the RNG states; it is written to a temp file, fsynced and renamed, so a kill -9 leaves the
previous epoch's file intact. Loading uses ``weights_only=True``: no code runs from it.
"""
from __future__ import annotations

import io
import random
from pathlib import Path

import torch

from ..core.errors import UsageError
from ..core.files import atomic_write

STATE_FILE = "state.pt"


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(run_dir: Path, state: dict) -> Path:
    buf = io.BytesIO()
    torch.save(state, buf)
    return atomic_write(Path(run_dir) / STATE_FILE, buf.getvalue())


def load_state(run_dir: Path) -> dict:
    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        raise UsageError(f"{run_dir} has no {STATE_FILE} to resume from (no epoch finished yet?)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise UsageError(f"{path} is not a readable run state: {' '.join(str(exc).split())[:200]}") from None
