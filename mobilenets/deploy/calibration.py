"""Images for calibration and verification, as NCHW float32 arrays preprocessed like the model.

Quantizers need a few hundred representative inputs and verification needs labelled ones when
they exist. A spec is what ``train --data`` takes (``folder:PATH``, ``cifar10:PATH``,
``synthetic``..., parsed by ``mobilenets.data.datasets``); a plain directory is read here,
recursively, class folders giving labels (ImageFolder layout) and a flat folder of images giving
unlabelled inputs.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..core.errors import UsageError
from ..core.preprocessing import Preprocessing
from ..data import datasets
from ..data.transforms import eval_transform

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
DEFAULT_CALIB_SIZE = 300


@dataclass
class ImageSet:
    """``images``: N x C x H x W float32; ``labels``: N ints or None; ``class_names`` of the folders."""
    images: np.ndarray
    labels: np.ndarray | None = None
    class_names: list[str] | None = None
    source: str = ""

    def __len__(self) -> int:
        return len(self.images)

    def batches(self, batch: int = 1):
        for i in range(0, len(self.images), batch):
            yield self.images[i:i + batch]


def load_images(spec: str | os.PathLike | np.ndarray | ImageSet, preprocessing: Preprocessing, *,
                limit: int | None = DEFAULT_CALIB_SIZE, seed: int = 0) -> ImageSet:
    """At most ``limit`` images of ``spec`` (sampled with ``seed``, classes interleaved),
    preprocessed with ``preprocessing``. Arrays and ``ImageSet`` pass through (truncated)."""
    if isinstance(spec, ImageSet):
        return spec if limit is None else ImageSet(spec.images[:limit], None if spec.labels is None
                                                   else spec.labels[:limit], spec.class_names, spec.source)
    if isinstance(spec, np.ndarray):
        arr = np.ascontiguousarray(spec, dtype=np.float32)
        if arr.ndim != 4:
            raise UsageError(f"calibration array must be N x C x H x W, got shape {arr.shape}")
        return ImageSet(arr[:limit] if limit else arr, source="array")
    path = Path(spec)
    if (not path.exists() and ":" in str(spec)) or (path / "train").is_dir():
        return _from_datasets(str(spec), preprocessing, limit, seed)
    if not path.is_dir():
        raise UsageError(f"calibration data {str(spec)!r}: no such directory of images")
    files, labels, names = _list_folder(path)
    if not files:
        raise UsageError(f"no images under {path} (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    order = _interleaved_sample(labels, limit, seed)
    files = [files[i] for i in order]
    tf = eval_transform(preprocessing)
    images, kept, bad = [], [], []
    for i, f in zip(order, files, strict=True):
        try:
            with Image.open(f) as im:
                images.append(tf(im.convert("RGB")).numpy())
            kept.append(i)
        except OSError:
            bad.append(f)
    if not images:
        raise UsageError(f"none of the images under {path} could be read (first: {bad[0]})")
    lab = np.asarray([labels[i] for i in kept], dtype=np.int64) if names else None
    return ImageSet(np.stack(images).astype(np.float32), lab, names, str(path))


def _list_folder(path: Path) -> tuple[list[Path], list[int], list[str] | None]:
    """Class folders (ImageFolder) when every image sits in a first-level subfolder, else plain images."""
    files = sorted(f for f in path.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
    top = sorted({f.relative_to(path).parts[0] for f in files if len(f.relative_to(path).parts) > 1})
    if top and all(len(f.relative_to(path).parts) > 1 for f in files):
        index = {n: i for i, n in enumerate(top)}
        return files, [index[f.relative_to(path).parts[0]] for f in files], top
    return files, [0] * len(files), None


def _interleaved_sample(labels: list[int], limit: int | None, seed: int) -> list[int]:
    """Indices of a seeded sample taking classes in turn, so a small limit still covers every class."""
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for i, c in enumerate(labels):
        by_class.setdefault(c, []).append(i)
    for idx in by_class.values():
        rng.shuffle(idx)
    out, queues = [], [list(v) for _, v in sorted(by_class.items())]
    while any(queues) and (limit is None or len(out) < limit):
        for q in queues:
            if q and (limit is None or len(out) < limit):
                out.append(q.pop())
    return out


def _from_datasets(spec: str, preprocessing: Preprocessing, limit: int | None, seed: int) -> ImageSet:
    """A ``train --data`` spec through ``mobilenets.data.datasets``: images of the training split
    (the validation split when there is none), normalised with the model's own preprocessing."""
    splits = datasets.load_data(spec, resolution=preprocessing.resolution, seed=seed)
    part = splits.train if len(splits.train) else splits.val
    n = len(part)
    idx = list(range(n))
    random.Random(seed).shuffle(idx)
    idx = sorted(idx[:limit] if limit else idx)
    if isinstance(part, datasets.ImageTensors):
        images = part.images[torch.tensor(idx, dtype=torch.long)].float().div_(255)
        mean = torch.tensor(preprocessing.mean).view(1, 3, 1, 1)
        std = torch.tensor(preprocessing.std).view(1, 3, 1, 1)
        arr = ((images - mean) / std).numpy().astype(np.float32)
        labels = part.labels[torch.tensor(idx, dtype=torch.long)].numpy().astype(np.int64)
        return ImageSet(arr, labels, list(part.class_names), spec)
    files = [Path(part.files[i]) for i in idx]
    tf = eval_transform(preprocessing)
    images = []
    for f in files:
        with Image.open(f) as im:
            images.append(tf(im.convert("RGB")).numpy())
    labels = np.asarray([int(part.labels[i]) for i in idx], dtype=np.int64)
    return ImageSet(np.stack(images).astype(np.float32), labels, list(splits.class_names), spec)


def random_inputs(shape: tuple[int, ...], n: int = 4, seed: int = 0) -> np.ndarray:
    """Seeded standard-normal inputs (what a normalised image looks like to the network)."""
    return np.random.default_rng(seed).standard_normal((n, *shape), dtype=np.float32)
