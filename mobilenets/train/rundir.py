"""The run directory: what a training run leaves behind, and how it is read back.

``config.json`` (the resolved ``TrainConfig`` plus what was decided at the start, ``resolved``),
``metrics.json``/``metrics.csv`` (one row per epoch), ``curves.png``, ``summary.json``, the
checkpoints (``best``/``last.safetensors``) and the resume state (``state.pt``, ``checkpoint``).
Every file is written atomically, and every JSON file is strict JSON: a value that is not a
finite number is written as ``null``, never as ``NaN`` or ``Infinity``.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..core.errors import UsageError
from ..core.files import atomic_path, atomic_write, check_parent
from .checkpoint import STATE_FILE
from .config import TrainConfig, validate

METRIC_FIELDS = ["epoch", "epochs", "lr", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5",
                 "images_per_s", "epoch_time_s", "elapsed_s"]


@dataclass
class RunResult:
    run_dir: Path
    best_top1: float
    best_epoch: int
    last: dict
    history: list[dict]
    skipped: list[dict] = field(default_factory=list)
    wall_time_s: float = 0.0
    stopped: str | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["run_dir"] = str(self.run_dir)
        return d


def finite(obj):
    """``obj`` with every float that is not finite replaced by ``None`` (recursively)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def write_json(path: Path, obj) -> Path:
    """Strict JSON (``allow_nan=False``; non-finite numbers as ``null``), written atomically."""
    return atomic_write(path, json.dumps(finite(obj), indent=1, allow_nan=False).encode())


def new_run_dir(cfg: TrainConfig) -> Path:
    """Where a new run of ``cfg`` goes: ``cfg.output``, else the first free ``runs/train/MODEL[N]``.
    Refused before any work when that path is a file, lies under one, or already holds a run."""
    path = Path(cfg.output) if cfg.output else _free_run_dir(Path("runs") / "train", cfg.model)
    check_parent(path / "config.json")  # the run directory itself must be (or become) a folder
    if (path / STATE_FILE).exists():
        raise UsageError(f"{path} already holds a run; resume it with --resume {path} or choose another --output")
    return path


def _free_run_dir(base: Path, model: str) -> Path:
    for i in range(1, 10_000):
        path = base / (model if i == 1 else f"{model}{i}")
        if not path.exists():
            return path
    raise UsageError(f"too many runs in {base}")


def write_config(run_dir: Path, cfg: TrainConfig, resolved: dict) -> None:
    write_json(run_dir / "config.json", {**cfg.to_dict(), "resolved": resolved})


def read_run_config(run_dir: str | Path) -> tuple[TrainConfig, dict]:
    """A run directory's ``config.json``: its config (validated) and what was resolved at the start."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise UsageError(f"{run_dir} is not a run directory (no config.json)")
    try:
        d = json.loads(path.read_text())
        return validate(TrainConfig.from_dict(d)), dict(d.get("resolved", {}))
    except (ValueError, TypeError, AttributeError) as exc:
        raise UsageError(f"{path} is not a readable run config: {' '.join(str(exc).split())[:200]}") from None


def write_metrics(run_dir: Path, history: list[dict]) -> None:
    write_json(run_dir / "metrics.json", history)
    lines = [",".join(METRIC_FIELDS)] + [",".join(_cell(r[k]) for k in METRIC_FIELDS) for r in history]
    atomic_write(run_dir / "metrics.csv", ("\n".join(lines) + "\n").encode())


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}" if math.isfinite(v) else ""
    return "" if v is None else str(v)


def write_summary(run_dir: Path, result: RunResult) -> None:
    summary = {k: v for k, v in result.to_dict().items() if k != "history"}
    summary["skipped_count"] = len(result.skipped)
    write_json(run_dir / "summary.json", summary)


def plot_curves(run_dir: Path, history: list[dict]) -> None:
    """``curves.png``: train/val loss and train/val top-1 per epoch (epochs not validated left out).
    matplotlib is imported here, where a plot is drawn: at the top it would cost every command-line
    start about 0.4 s."""
    from matplotlib.figure import Figure

    ep = [r["epoch"] for r in history]
    val = [r for r in history if r["val_top1"] is not None]
    vep = [r["epoch"] for r in val]
    fig = Figure(figsize=(10, 4))
    a, b = fig.subplots(1, 2)
    a.plot(ep, [r["train_loss"] for r in history], label="train")
    a.plot(vep, [r["val_loss"] for r in val], "o-", label="val", markersize=3)
    a.set_xlabel("epoch")
    a.set_ylabel("loss")
    a.legend()
    b.plot(ep, [r["train_top1"] for r in history], label="train top-1 (augmented)")
    b.plot(vep, [r["val_top1"] for r in val], "o-", label="val top-1", markersize=3)
    b.plot(vep, [r["val_top5"] for r in val], "o-", label="val top-5", alpha=0.5, markersize=3)
    b.set_xlabel("epoch")
    b.set_ylabel("accuracy %")
    b.legend()
    fig.tight_layout()
    with atomic_path(run_dir / "curves.png") as tmp:
        fig.savefig(tmp, dpi=80)
