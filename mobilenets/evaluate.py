"""``evaluate(target, data)``: top-1, top-5 and loss of a trained model on a data set.

``target`` is anything ``weights.resolve_model`` reads: a training run directory, a checkpoint
(with a model name when the file does not say which model it holds), or an exported file
(``.onnx``, ``.xml``, ``.tflite``), which runs in its own runtime (``deploy.runtimes``); a
quantization-aware checkpoint runs fake-quantized with its learned ranges, as it trained. The
images are preprocessed as the target records (its checkpoint metadata or export sidecar), and
scored by the loop that validates during training (``train.evaluation``), so the figures agree.
"""
from __future__ import annotations

import math
import os

import torch

from .core.errors import UsageError
from .core.hardware import resolve_device
from .data.datasets import LazyImageFolder, load_data
from .deploy.qat import learned_model
from .deploy.runtimes import open_session
from .models.meta import CheckpointMeta
from .train import distributed as D
from .train.evaluation import evaluate as score
from .train.evaluation import tta_mode
from .weights.resolve import resolve_model

NO_HOLD_OUT = ("none", "all")


def evaluate(target, data: str, *, weights: str | os.PathLike | None = None, batch_size: int = 100,
             device: str = "auto", strict: bool = False, download: bool = True, channels_last: bool = False,
             val_size: int | float | str | None = None, seed: int | None = None, tta: bool | str = "none") -> dict:
    """Top-1/top-5 (percent), loss and image count of ``target`` on ``data``'s validation split.

    ``weights``: the checkpoint when ``target`` is a model name. A folder without ``val/``: the
    images training held out (``val_size``/``seed``; ``None``: as the checkpoint records them),
    or all of ``train/`` with ``val_size="none"`` or when the checkpoint records no split.
    ``tta``: "mirror" or "mirror-shift" views (``top1_single`` then reports the single view).
    """
    tta = tta_mode(tta)
    if batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}")
    hold_out = _val_size(val_size)
    dev = resolve_device(device)
    resolved = resolve_model(target, weights)
    if resolved.kind == "name" and weights is None:
        raise UsageError(f"{target} is a model name: give its checkpoint (--weights FILE), a run directory, "
                         f"a checkpoint or an exported file")
    meta = resolved.meta
    qat = resolved.model is not None and getattr(resolved.model, "qat_state", None) is not None  # a QAT checkpoint
    # an export runs on the CPU unless a CUDA device is asked for by name (ONNX Runtime's CUDA provider)
    on = str(dev) if device not in (None, "auto") and dev.type == "cuda" else None
    session = open_session(resolved.path, threads=torch.get_num_threads(), device=on) if resolved.is_export else None
    pre = session.feed() if session is not None else resolved.preprocessing
    names = meta.class_names
    hold_out = meta.extra.get("val_size") if hold_out == "recorded" else hold_out
    seed = seed if seed is not None else meta.extra.get("split_seed") or 0
    classes = meta.config.num_classes if meta.config is not None else len(names) if names else 10
    splits = load_data(data, resolution=pre.resolution, preset=pre.kind, strict=strict, download=download,
                       class_names=names, train=False, num_classes=classes, val_size=hold_out, seed=seed)
    if isinstance(splits.val, LazyImageFolder):
        splits.val.pre = pre  # the target's crop and interpolation, not the data's defaults
    label_map = _label_map(splits.class_names, names, meta)
    if session is not None:  # NCHW float32 numpy in, whatever device its runtime runs on
        model, dev, channels_last = _session_logits(session), torch.device("cpu"), False
    else:
        model = learned_model(resolved.model) if qat else resolved.model  # QAT: what its int8 export computes
        channels_last = channels_last and not qat
        model = model.to(dev)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
    res = score(model, splits.val, pre, batch_size=batch_size, device=dev, channels_last=channels_last,
                ctx=D.Context(device=dev), label_map=label_map, tta=tta)
    skipped = [{"path": p, "reason": r} for p, r in res.pop("skipped")]
    skipped += [{"path": s.path, "reason": s.reason} for s in splits.skipped]
    path = resolved.path if resolved.path is not None else weights
    if qat:
        res["quantization"] = "fake int8, the QAT checkpoint's learned ranges"
    return {**res, "model": resolved.name, "kind": resolved.kind, "weights": None if path is None else str(path),
            "data": str(data), "split": splits.info.get("val"), "preprocessing": pre.to_dict(), "skipped": skipped}


def _session_logits(session):
    def logits(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(x.numpy()))
    return logits


def _val_size(value) -> int | float | str | None:
    """``value`` as ``load_data`` takes it: a count, a fraction, ``None`` (no hold-out: all of
    train/), or "recorded" (as the checkpoint says)."""
    if value is None:
        return "recorded"
    if isinstance(value, str):
        if value.strip().lower() in NO_HOLD_OUT:
            return None
        try:
            value = float(value)
        except ValueError:
            raise UsageError(f"--val-size must be a count, a fraction < 1 or none, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise UsageError(f"--val-size must be a count, a fraction < 1 or none, got {value!r}")
    if value == 0:
        return None
    if value < 1:
        return float(value)
    if not float(value).is_integer():
        raise UsageError(f"--val-size must be a whole count or a fraction < 1, got {value}")
    return int(value)


def _label_map(data_names: list[str], names: list[str] | None, meta: CheckpointMeta) -> torch.Tensor | None:
    """The model's class index of each of the data's classes (``None``: the same order)."""
    if names is not None and list(data_names) != list(names):
        missing = [c for c in data_names if c not in names]
        if missing:
            raise UsageError(f"the data has classes the model does not know: {', '.join(missing[:5])}")
        return torch.tensor([names.index(c) for c in data_names])
    classes = meta.config.num_classes if meta.config is not None else None
    if names is None and classes is not None and len(data_names) > classes:
        raise UsageError(f"the data has {len(data_names)} classes, the model {classes}")
    return None
