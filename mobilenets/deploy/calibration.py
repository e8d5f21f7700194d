"""Images for calibration, verification and accuracy figures, as NCHW float32 arrays
preprocessed like the model.

Quantizers need a few hundred representative inputs; every accuracy figure needs labelled images
the quantizer never saw. A spec is what ``train --data`` takes (``folder:PATH``, ``cifar10:PATH``,
``synthetic``..., parsed by ``mobilenets.data.datasets``); a plain directory is read here,
recursively, class folders giving labels (ImageFolder layout) and a flat folder of images giving
unlabelled inputs.

Calibration and validation never overlap: from a spec, calibration draws from the training
split and validation (``load_held_out``) from the held-out one, split as the model's training
run split it (``split_of``: the data, hold-out size and seed its checkpoint records), so an
exported model is scored on the same images as its checkpoint; ``check_disjoint`` refuses two
sets that share a file.
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
DEFAULT_VAL_SIZE = 0.1  # train's default hold-out (TrainConfig.val_size)


@dataclass
class ImageSet:
    """``images``: N x C x H x W float32; ``labels``: N ints or None; ``class_names`` of the folders."""
    images: np.ndarray
    labels: np.ndarray | None = None
    class_names: list[str] | None = None
    source: str = ""
    files: list[str] | None = None  # where each image came from, when known (``check_disjoint``)
    part: str = ""  # "training split", "held-out split", "folder", "array"

    def describe(self) -> dict:
        """What the set is, for reports: its source, part and size."""
        return {"source": self.source, "part": self.part, "images": len(self),
                "labelled": self.labels is not None}

    def __len__(self) -> int:
        return len(self.images)

    def batches(self, batch: int = 1):
        for i in range(0, len(self.images), batch):
            yield self.images[i:i + batch]


def split_of(spec, meta=None) -> dict:
    """How ``spec``'s ``train/`` is split into training and held-out images: as the model's
    training run split it when ``meta`` (its ``CheckpointMeta``) records the same data, else
    ``train``'s default (10% held out, seed 0). Returns ``{"val_size", "seed"}``."""
    extra = getattr(meta, "extra", None) or {}
    recorded = extra.get("data")
    if recorded is not None and isinstance(spec, (str, os.PathLike)) and _same_data(recorded, spec):
        return {"val_size": extra.get("val_size") or DEFAULT_VAL_SIZE, "seed": int(extra.get("split_seed") or 0)}
    return {"val_size": DEFAULT_VAL_SIZE, "seed": 0}


def _same_data(a, b) -> bool:
    try:
        return str(datasets.parse_data_spec(str(a))) == str(datasets.parse_data_spec(str(b)))
    except UsageError:
        return str(a) == str(b)


def is_spec(spec) -> bool:
    """A ``train --data`` spec (or a folder holding ``train/``) rather than a plain image folder."""
    if not isinstance(spec, (str, os.PathLike)):
        return False
    path = Path(spec)
    return (not path.exists() and ":" in str(spec)) or (path / "train").is_dir()


def load_images(spec: str | os.PathLike | np.ndarray | ImageSet, preprocessing: Preprocessing, *,
                limit: int | None = DEFAULT_CALIB_SIZE, seed: int = 0, split: dict | None = None,
                what: str = "calibration data") -> ImageSet:
    """At most ``limit`` images of ``spec`` (sampled with ``seed``, classes interleaved),
    preprocessed with ``preprocessing``; of a spec, its training split only (``split``: as
    ``split_of`` returns it; default: ``train``'s). Arrays and ``ImageSet`` pass through (truncated)."""
    if isinstance(spec, ImageSet):
        return spec if limit is None else ImageSet(spec.images[:limit], None if spec.labels is None
                                                   else spec.labels[:limit], spec.class_names, spec.source,
                                                   None if spec.files is None else spec.files[:limit], spec.part)
    if isinstance(spec, np.ndarray):
        arr = np.ascontiguousarray(spec, dtype=np.float32)
        if arr.ndim != 4:
            raise UsageError(f"{what}: an array must be N x C x H x W, got shape {arr.shape}")
        return ImageSet(arr[:limit] if limit else arr, source="array", part="array")
    if is_spec(spec):
        return _from_datasets(str(spec), preprocessing, limit, seed, split or split_of(spec), held_out=False)
    path = Path(spec)
    if not path.is_dir():
        raise UsageError(f"{what} {str(spec)!r}: no such directory of images or dataset spec")
    files, labels, names = _list_folder(path)
    if not files:
        raise UsageError(f"no images under {path} (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    order = _interleaved_sample(labels, limit, seed)
    files = [files[i] for i in order]
    tf = eval_transform(preprocessing)
    images, kept, kept_files, bad = [], [], [], []
    for i, f in zip(order, files, strict=True):
        try:
            with Image.open(f) as im:
                images.append(tf(im.convert("RGB")).numpy())
            kept.append(i)
            kept_files.append(str(f.resolve()))
        except OSError:
            bad.append(f)
    if not images:
        raise UsageError(f"none of the images under {path} could be read (first: {bad[0]})")
    lab = np.asarray([labels[i] for i in kept], dtype=np.int64) if names else None
    return ImageSet(np.stack(images).astype(np.float32), lab, names, str(path), kept_files, "folder")


def load_held_out(spec, preprocessing: Preprocessing, *, split: dict | None = None, limit: int | None = None,
                  seed: int = 0) -> ImageSet:
    """The labelled held-out images of ``spec`` (at most ``limit``): its ``val/`` or test split, or the
    share of ``train/`` that ``split`` holds out; a plain folder of class folders or an ``ImageSet``
    is taken whole."""
    if is_spec(spec):
        out = _from_datasets(str(spec), preprocessing, limit, seed, split or split_of(spec), held_out=True)
    else:
        out = load_images(spec, preprocessing, limit=limit, seed=seed, what="validation data")
    if out.labels is None:
        raise UsageError(f"validation images {out.source or 'given'} have no labels: use class folders or a "
                         f"dataset spec")
    if not len(out):
        raise UsageError(f"no validation images in {out.source}")
    return out


def check_disjoint(calib: ImageSet | None, val: ImageSet | None) -> None:
    """Refuse calibration and validation sets that share an image file."""
    if calib is None or val is None or calib.files is None or val.files is None:
        return
    shared = set(calib.files) & set(val.files)
    if shared:
        raise UsageError(f"calibration and validation share {len(shared)} image(s) (e.g. {sorted(shared)[0]}): "
                         f"accuracy must be measured on images the quantizer never saw")


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


def _from_datasets(spec: str, preprocessing: Preprocessing, limit: int | None, seed: int, split: dict,
                   held_out: bool) -> ImageSet:
    """A ``train --data`` spec through ``mobilenets.data.datasets``: images of its training or its
    held-out split (``split``), normalised with the model's own preprocessing."""
    splits = datasets.load_data(spec, resolution=preprocessing.resolution, val_size=split["val_size"],
                                seed=split["seed"])
    part = splits.val if held_out else splits.train
    name = f"held-out split ({splits.info.get('val', 'val')})" if held_out else "training split"
    if not len(part):
        raise UsageError(f"{spec} has no images in its {name}")
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
        files = None if part.files is None else [str(Path(part.files[i]).resolve()) for i in idx]
        return ImageSet(arr, labels, list(part.class_names), spec, files, name)
    files = [Path(part.files[i]) for i in idx]
    tf = eval_transform(preprocessing)
    images = []
    for f in files:
        with Image.open(f) as im:
            images.append(tf(im.convert("RGB")).numpy())
    labels = np.asarray([int(part.labels[i]) for i in idx], dtype=np.int64)
    return ImageSet(np.stack(images).astype(np.float32), labels, list(splits.class_names), spec,
                    [str(f.resolve()) for f in files], name)


def random_inputs(shape: tuple[int, ...], n: int = 4, seed: int = 0) -> np.ndarray:
    """Seeded standard-normal inputs (what a normalised image looks like to the network)."""
    return np.random.default_rng(seed).standard_normal((n, *shape), dtype=np.float32)
