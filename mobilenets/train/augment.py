"""Batched augmentation on uint8 tensors, in the main process (CPU or GPU).

Per-image PIL augmentation is what bounds a CPU epoch of small images; here a whole batch is
pad-cropped, flipped and cut out with a few tensor ops, its randomness drawn from one
``torch.Generator`` seeded by (seed, epoch, rank), so an epoch replays exactly after a resume.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.preprocessing import Preprocessing
from ..data.transforms import tv


@dataclass(frozen=True)
class AugmentConfig:
    pad_crop: int = 4         # pixels of zero padding before the random crop (cifar preset); 0: off
    flip: bool = True
    cutout: int = 0           # side of the square erased per image; 0: off
    policy: str | None = None  # "autoaugment" | "randaugment" (per image, slower) | None


def pad_crop(x: torch.Tensor, pad: int, g: torch.Generator) -> torch.Tensor:
    """Zero-pad by ``pad`` then take a random crop of the original size, per image."""
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=g)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=g)
    rows = (oy[:, None] + torch.arange(h))[:, None, :, None].to(x.device)
    cols = (ox[:, None] + torch.arange(w))[:, None, None, :].to(x.device)
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[bi, ci, rows, cols]


def mirror(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The images of batch ``x`` where the bool ``mask`` (one per image) is set, mirrored left-right."""
    return torch.where(mask.to(x.device)[:, None, None, None], x.flip(3), x)


def flip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return mirror(x, torch.rand(x.shape[0], generator=g) < 0.5)


def cutout(x: torch.Tensor, size: int, g: torch.Generator, fill: tuple[float, ...] = (0.0,)) -> torch.Tensor:
    """Erase one ``size`` x ``size`` square per image (centre uniform, clipped at borders) to ``fill``
    (per channel, in the pixel scale of ``x``)."""
    b, _, h, w = x.shape
    cy = torch.randint(0, h, (b,), generator=g).to(x.device)
    cx = torch.randint(0, w, (b,), generator=g).to(x.device)
    ys, xs = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    iny = (ys[None] >= (cy - size // 2)[:, None]) & (ys[None] < (cy - size // 2 + size)[:, None])
    inx = (xs[None] >= (cx - size // 2)[:, None]) & (xs[None] < (cx - size // 2 + size)[:, None])
    hole = (iny[:, :, None] & inx[:, None, :])[:, None]
    value = torch.tensor(fill, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return torch.where(hole, value, x)


def _policy(x: torch.Tensor, name: str, g: torch.Generator) -> torch.Tensor:
    T = tv()
    tf = T.AutoAugment(T.AutoAugmentPolicy.CIFAR10) if name == "autoaugment" else T.RandAugment()
    # torchvision draws from the global RNG: fork it, seeded from our generator, to stay replayable.
    seed = int(torch.randint(0, 2**62, (1,), generator=g))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.stack([tf(img) for img in x])


def augment(x: torch.Tensor, cfg: AugmentConfig, pre: Preprocessing, g: torch.Generator) -> torch.Tensor:
    """Training augmentation of a uint8 batch (the crop of the imagenet preset happened at decode)."""
    if cfg.policy:
        x = _policy(x, cfg.policy, g)
    if cfg.pad_crop and pre.kind == "cifar":
        x = pad_crop(x, cfg.pad_crop, g)
    if cfg.flip:
        x = flip(x, g)
    if cfg.cutout:
        # the mean colour: zero after normalisation, as the Cutout paper erases normalised images
        x = cutout(x, cfg.cutout, g, fill=tuple(round(255 * m) for m in pre.mean))
    return x


def normalize(x: torch.Tensor, pre: Preprocessing, channels_last: bool = False,
              device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 batch -> normalised float32 (as ``eval_transform``), optionally channels-last."""
    x = x.to(device, non_blocking=True)
    mean = torch.tensor(pre.mean, device=x.device).view(1, -1, 1, 1) * 255
    inv_std = 1 / (torch.tensor(pre.std, device=x.device).view(1, -1, 1, 1) * 255)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return ((x.float() - mean) * inv_std).contiguous(memory_format=fmt)
