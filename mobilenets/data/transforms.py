"""The transforms that apply a ``Preprocessing`` record (``core.preprocessing``) to PIL images.

torchvision is imported on first use (``tv``), not with the package: with the ``torch._dynamo``
it loads, it costs about as much as torch itself at every start of the command line, and most
verbs never decode an image.
"""
from __future__ import annotations

import math
from types import ModuleType

import torch

from ..core.preprocessing import Preprocessing


def tv() -> ModuleType:
    """``torchvision.transforms.v2``, imported on first use."""
    from torchvision.transforms import v2
    return v2


def resize_transform(pre: Preprocessing, train: bool = False):
    """PIL image -> uint8 tensor at ``pre.resolution``: random resized crop to train on ImageNet-style
    images, resize to ``resolution / crop_pct`` and center crop to evaluate them, a plain resize for
    small (CIFAR-style) images."""
    T = tv()
    interp = T.InterpolationMode(pre.interpolation)
    if train and pre.kind == "imagenet":
        size = [T.RandomResizedCrop(pre.resolution, interpolation=interp, antialias=True)]
    elif pre.kind == "imagenet":
        size = [T.Resize(math.floor(pre.resolution / pre.crop_pct), interpolation=interp, antialias=True),
                T.CenterCrop(pre.resolution)]
    else:
        size = [T.Resize((pre.resolution, pre.resolution), interpolation=interp, antialias=True)]
    return T.Compose([T.ToImage(), *size])


def eval_transform(pre: Preprocessing):
    """PIL image -> normalised float tensor, the deterministic evaluation path."""
    T = tv()
    return T.Compose([resize_transform(pre), T.ToDtype(torch.float32, scale=True), T.Normalize(pre.mean, pre.std)])
