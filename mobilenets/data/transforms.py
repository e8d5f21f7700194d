"""Preprocessing presets. A ``Preprocessing`` record travels with checkpoints and exports so
that prediction and evaluation use exactly what training used.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torchvision.transforms import v2 as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
INCEPTION_MEAN = (0.5, 0.5, 0.5)   # TF-trained weights: [-1, 1]
INCEPTION_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes a tensor: ``kind`` "imagenet" (resize to resolution/crop_pct, center
    crop) or "cifar" (resize to resolution, no crop), then normalise with mean/std."""
    kind: str = "imagenet"
    resolution: int = 224
    crop_pct: float = 0.875
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        d = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for key in ("mean", "std"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)


def imagenet(resolution: int = 224) -> Preprocessing:
    return Preprocessing("imagenet", resolution)


def cifar(resolution: int = 32, mean=CIFAR10_MEAN, std=CIFAR10_STD) -> Preprocessing:
    return Preprocessing("cifar", resolution, 1.0, tuple(mean), tuple(std))


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
