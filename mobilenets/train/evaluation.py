"""Validation: top-1, top-5 and loss of a model on a data set, with optional test-time augmentation.

``evaluate`` takes a module or any callable from a normalised NCHW float batch to logits (an
exported file's runtime session, wrapped), so training, ``mobilenets eval`` and exported files
are scored by the same loop.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import UsageError
from ..core.preprocessing import Preprocessing
from ..data.datasets import ImageTensors, LazyImageFolder, collate_skip
from . import distributed as D
from .augment import normalize

# Test-time augmentation: the mean logits over each shifted view (1 px, reflect-padded) and its mirror.
TTA_SHIFTS = {"none": [(0, 0)], "mirror": [(0, 0)], "mirror-shift": [(0, 0), (1, 1), (-1, -1)]}

Logits = Callable[[torch.Tensor], torch.Tensor]


def validates(epoch: int, epochs: int, every: int) -> bool:
    """Whether ``epoch`` (1-based) of ``epochs`` is validated: the first, every ``every``-th and the last."""
    return epoch == 1 or epoch % every == 0 or epoch == epochs


def tta_views(mode: str) -> int:
    """How many forward passes ``mode`` costs per image."""
    return 1 if mode == "none" else 2 * len(TTA_SHIFTS[mode])


def tta_mode(tta: bool | str) -> str:
    """``True``/``False`` (the earlier flag) as a mode name; a bad name is a UsageError."""
    mode = {True: "mirror", False: "none"}[tta] if isinstance(tta, bool) else tta
    if mode not in TTA_SHIFTS:
        raise UsageError(f"tta must be {', '.join(TTA_SHIFTS)}: {tta!r}")
    return mode


def tta_logits(model: Logits, xb: torch.Tensor, mode: str, first: torch.Tensor | None = None) -> torch.Tensor:
    """Mean float logits of ``model`` over the views of ``mode`` (``first``: the plain view's, if known)."""
    if mode == "none":
        return model(xb).float() if first is None else first
    total = 0
    for dy, dx in TTA_SHIFTS[mode]:
        v = xb
        if (dy, dx) != (0, 0):
            h, w = xb.shape[-2:]
            v = F.pad(xb, (1, 1, 1, 1), mode="reflect")[..., 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
        plain = first if first is not None and (dy, dx) == (0, 0) else model(v).float()
        total = total + plain + model(v.flip(3)).float()
    return total / tta_views(mode)


def eval_batches(data, batch_size: int, ctx: D.Context, workers: int = 2):
    """(uint8 images, labels, unreadable files) in order, this rank's share, nothing dropped."""
    index = D.shard(torch.arange(len(data)), ctx, pad=False)
    if isinstance(data, ImageTensors):
        for i in range(0, len(index), batch_size):
            x, y = data.batch(index[i:i + batch_size])
            yield x, y, []
        return
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, sampler=index.tolist(), num_workers=workers,
                                         collate_fn=collate_skip)
    yield from loader


@torch.no_grad()
def evaluate(model: nn.Module | Logits, data: ImageTensors | LazyImageFolder, pre: Preprocessing, *,
             batch_size: int = 100, device: torch.device | str = "cpu", channels_last: bool = False,
             ctx: D.Context | None = None, label_map: torch.Tensor | None = None, workers: int = 2,
             tta: bool | str = "none") -> dict:
    """Top-1, top-5 (percent) and mean cross-entropy of ``model`` on ``data`` (summed over ranks).

    ``tta``: "mirror" scores the mean logits of each image and its horizontal mirror,
    "mirror-shift" also those of the image shifted by one pixel both ways (6 views; ``True`` means
    "mirror"); ``top1_single`` then reports the single-view top-1 from the same pass.
    ``label_map``: the model's class index of each of the data's classes.
    """
    tta = tta_mode(tta)
    if batch_size < 1:
        raise UsageError(f"batch size must be >= 1, got {batch_size}")
    ctx = ctx or D.Context(device=torch.device(device))
    was_training = isinstance(model, nn.Module) and model.training
    if isinstance(model, nn.Module):
        model.eval()
    loss_sum = correct1 = correct5 = single1 = count = 0.0
    skipped: list[tuple[str, str]] = []
    for x, y, bad in eval_batches(data, batch_size, ctx, workers):
        skipped += bad
        if len(y) == 0:
            continue
        if label_map is not None:
            y = label_map[y]
        xb = normalize(x, pre, channels_last, ctx.device)
        logits = model(xb).float()
        y = y.to(logits.device)
        if tta != "none":
            single1 += (logits.argmax(1) == y).sum().item()
            logits = tta_logits(model, xb, tta, first=logits)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top == y[:, None]
        correct1 += hits[:, 0].sum().item()
        correct5 += hits.any(dim=1).sum().item()
        count += len(y)
    if was_training:
        model.train()
    loss_sum, correct1, correct5, single1, count = D.all_reduce_sum(
        [loss_sum, correct1, correct5, single1, count], ctx)
    if count == 0:
        raise UsageError("the validation set has no readable images")
    out = {"top1": 100 * correct1 / count, "top5": 100 * correct5 / count, "loss": loss_sum / count,
           "images": int(count), "skipped": skipped}
    if tta != "none":
        out["top1_single"] = 100 * single1 / count
    return out
