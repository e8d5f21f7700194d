"""Class names for predictions: the 1000 ImageNet names ship with the package, so a
checkpoint that stores no names still prints words rather than indices.

TF-slim checkpoints have 1001 outputs, index 0 being "background"; the helpers here
name or drop that extra class so such weights line up with the 1000-class convention.
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources

import torch

BACKGROUND = "background"


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in the usual index order (torchvision's wording)."""
    text = resources.files(__package__).joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    assert len(names) == 1000, f"imagenet_classes.txt has {len(names)} names"
    return names


def class_names_for(num_classes: int, stored: list[str] | tuple[str, ...] | None = None) -> list[str]:
    """Names for ``num_classes`` outputs: the stored ones when they fit, else ImageNet's
    (with the TF background class for 1001), else the indices as text."""
    if stored and len(stored) == num_classes:
        return list(stored)
    if num_classes == 1000:
        return list(imagenet_classes())
    if num_classes == 1001:
        return [BACKGROUND, *imagenet_classes()]
    return [str(i) for i in range(num_classes)]


def drop_background(weight: torch.Tensor, bias: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A 1001-class TF classifier (weight rows or conv filters first) as a 1000-class one."""
    if weight.shape[0] != 1001:
        raise ValueError(f"expected 1001 classes, got {weight.shape[0]}")
    return weight[1:].clone(), None if bias is None else bias[1:].clone()
