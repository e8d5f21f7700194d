"""The transforms that apply a ``Preprocessing`` record (``core.preprocessing``) to PIL images."""
from __future__ import annotations

import math

import torch
from torchvision.transforms import v2 as T

from ..core.preprocessing import Preprocessing


def _interp(name: str) -> T.InterpolationMode:
    return T.InterpolationMode(name)


def eval_transform(pre: Preprocessing) -> T.Compose:
    """PIL image -> normalised float tensor, the deterministic evaluation path."""
    if pre.kind == "imagenet":
        size = [T.Resize(math.floor(pre.resolution / pre.crop_pct), interpolation=_interp(pre.interpolation),
                         antialias=True), T.CenterCrop(pre.resolution)]
    else:
        size = [T.Resize((pre.resolution, pre.resolution), interpolation=_interp(pre.interpolation), antialias=True)]
    return T.Compose([T.ToImage(), *size, T.ToDtype(torch.float32, scale=True), T.Normalize(pre.mean, pre.std)])
