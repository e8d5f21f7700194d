"""Data sets for training and evaluation: CIFAR-10/100, ImageFolder trees, synthetic.

Every data set here yields ``uint8`` images of one size (``N x 3 x R x R``) and ``int64``
labels; augmentation, normalisation and the memory format happen batched afterwards
(``mobilenets.train.augment``), in the main process, so the same code runs on CPU and GPU.

Small images (CIFAR, thumbnails) are decoded once into one in-memory tensor: a CPU epoch is
then bound by the network, not by JPEG decoding. Large images (ImageNet layout) stay on disk
and are decoded by ``DataLoader`` workers (``LazyImageFolder``), random-resized-cropped there.

A corrupt or unreadable image is skipped with a warning naming the file and counted in
``skipped``; ``strict=True`` makes it an error.
"""
from __future__ import annotations

import os
import pickle
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from ..core.errors import UsageError
from ..core.preprocessing import CIFAR10_MEAN, CIFAR10_STD, STATS, Preprocessing, cifar, imagenet
from .transforms import resize_transform, tv

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
SMALL_IMAGE = 64            # images no larger than this (max side) are CIFAR-like: kept in memory
MEMORY_FRACTION = 0.3       # in-memory tensors may use up to this fraction of RAM


class CorruptImage(UsageError):
    """An image that cannot be decoded, under ``strict``."""


@dataclass(frozen=True)
class DataSpec:
    """A parsed ``--data`` value: ``cifar10:PATH``, ``cifar100:PATH``, ``folder:PATH``, ``synthetic[:N]``."""
    kind: str
    path: Path | None = None
    size: int = 0   # synthetic: number of training images

    def __str__(self) -> str:
        if self.kind == "synthetic":
            return f"synthetic:{self.size}"
        return f"{self.kind}:{self.path}"


DATA_KINDS = ("cifar10", "cifar100", "folder", "synthetic")


def parse_data_spec(spec: str | DataSpec) -> DataSpec:
    if isinstance(spec, DataSpec):
        return spec
    kind, _, rest = str(spec).partition(":")
    kind = kind.strip().lower()
    if kind == "synthetic":
        try:
            size = int(rest) if rest else 512
        except ValueError:
            raise UsageError(f"synthetic data takes a number of images, e.g. synthetic:512, got {spec!r}") from None
        if size < 2:
            raise UsageError(f"synthetic data needs at least 2 images, got {size}")
        return DataSpec("synthetic", None, size)
    if kind not in DATA_KINDS or not rest:
        if kind not in DATA_KINDS and Path(spec).is_dir():
            return DataSpec("folder", Path(spec))
        raise UsageError(f"--data must be cifar10:PATH, cifar100:PATH, folder:PATH or synthetic[:N], got {spec!r}")
    return DataSpec(kind, Path(rest).expanduser())


@dataclass
class Skipped:
    path: str
    reason: str


@dataclass
class ImageTensors:
    """Decoded images in memory: ``images`` uint8 N x C x R x R, ``labels`` int64 N."""
    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    files: list[str] | None = None
    skipped: list[Skipped] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> ImageTensors:
        files = None if self.files is None else [self.files[i] for i in index.tolist()]
        return ImageTensors(self.images[index], self.labels[index], self.class_names, files, [])

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]


@dataclass
class DataSplits:
    """Training and validation sets plus what was decided about them (recorded in the run)."""
    train: ImageTensors | LazyImageFolder
    val: ImageTensors | LazyImageFolder
    class_names: list[str]
    preprocessing: Preprocessing
    info: dict = field(default_factory=dict)

    @property
    def skipped(self) -> list[Skipped]:
        return list(self.train.skipped) + list(self.val.skipped)


# ----------------------------------------------------------------------------------------- decoding

def _warn_skip(path: str, reason: str, strict: bool, skipped: list[Skipped]) -> None:
    if strict:
        raise CorruptImage(f"cannot read image {path}: {reason} (drop --strict to skip such files)")
    warnings.warn(f"skipping unreadable image {path}: {reason}", stacklevel=3)
    skipped.append(Skipped(path, reason))


def _open_rgb(path: str) -> Image.Image:
    with Image.open(path) as im:
        im.load()
        return im.convert("RGB")


def _decode_fixed(path: str, resolution: int) -> torch.Tensor | str:
    """uint8 3 x R x R (resized like ``eval_transform`` of a "cifar" preset), or the error text."""
    try:
        im = _open_rgb(path)
    except Exception as exc:  # noqa: BLE001  (PIL raises many types for broken files)
        return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:200]
    if im.size != (resolution, resolution):
        im = im.resize((resolution, resolution), Image.BILINEAR, reducing_gap=None)
    return torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(resolution, resolution, 3).permute(2, 0, 1)


def decode_files(files: list[str], labels: list[int], resolution: int, class_names: list[str], *,
                 strict: bool = False, threads: int | None = None) -> ImageTensors:
    """Decode ``files`` once into an in-memory uint8 tensor (PIL releases the GIL: threads help)."""
    threads = threads or min(4, os.cpu_count() or 1)
    images = torch.empty(len(files), 3, resolution, resolution, dtype=torch.uint8)
    keep = torch.ones(len(files), dtype=torch.bool)
    skipped: list[Skipped] = []
    with ThreadPoolExecutor(threads) as pool:
        for i, out in enumerate(pool.map(lambda f: _decode_fixed(f, resolution), files, chunksize=256)
                                if threads > 1 else map(lambda f: _decode_fixed(f, resolution), files)):
            if isinstance(out, str):
                _warn_skip(files[i], out, strict, skipped)
                keep[i] = False
            else:
                images[i] = out
    lab = torch.tensor(labels, dtype=torch.int64)
    kept_files = [f for f, k in zip(files, keep.tolist(), strict=True) if k]
    if not keep.all():
        images, lab = images[keep], lab[keep]
    return ImageTensors(images, lab, class_names, kept_files, skipped)


# ------------------------------------------------------------------------------------------ folders

def scan_folder(root: Path, class_names: list[str] | None = None) -> tuple[list[str], list[int], list[str]]:
    """(files, labels, class names) of an ImageFolder tree ``root/<class>/*``, sorted."""
    if not root.is_dir():
        raise UsageError(f"no such directory: {root}")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise UsageError(f"{root} has no class folders (expected {root}/<class>/<image>)")
    files, labels = [], []
    empty = []
    for name in classes:
        found = sorted(str(p) for p in (root / name).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS
                       and p.is_file())
        if not found:
            empty.append(name)
        files += found
        labels += [name] * len(found)
    if empty:
        raise UsageError(f"empty class folder{'s' if len(empty) > 1 else ''} in {root}: {', '.join(empty[:5])}"
                         + (f" (+{len(empty) - 5} more)" if len(empty) > 5 else ""))
    names = class_names if class_names is not None else classes
    if class_names is not None:
        extra = [c for c in classes if c not in class_names]
        if extra:
            raise UsageError(f"{root} has classes that training lacks: {', '.join(extra[:5])}"
                             + (f" (+{len(extra) - 5} more)" if len(extra) > 5 else ""))
    index = {c: i for i, c in enumerate(names)}
    return files, [index[c] for c in labels], list(names)


def probe_size(files: list[str], n: int = 8) -> int:
    """Largest side among a few images (decides "small images in memory" vs. lazy decoding)."""
    largest = 0
    for f in files[:: max(1, len(files) // n)][:n]:
        try:
            with Image.open(f) as im:
                largest = max(largest, *im.size)
        except Exception:  # noqa: BLE001
            continue
    return largest


class LazyImageFolder(torch.utils.data.Dataset):
    """Images decoded per access (DataLoader workers): for trees of large images.

    Training: random resized crop to ``resolution`` (flip is applied batched later);
    evaluation: resize to resolution/crop_pct + center crop, as ``eval_transform``.
    An unreadable image yields ``None`` and is dropped by ``collate_skip``.
    """

    def __init__(self, files: list[str], labels: list[int], class_names: list[str], pre: Preprocessing,
                 train: bool, strict: bool = False):
        self.files, self.labels, self.class_names = files, labels, class_names
        self.pre, self.train, self.strict = pre, train, strict
        self.skipped: list[Skipped] = []   # filled by the training loop from collate results
        self._tf = None

    def __len__(self) -> int:
        return len(self.files)

    def _transform(self):
        if self._tf is None:
            self._tf = resize_transform(self.pre, train=self.train)
        return self._tf

    def __getitem__(self, i: int):
        try:
            im = _open_rgb(self.files[i])
        except Exception as exc:  # noqa: BLE001
            if self.strict:
                raise CorruptImage(f"cannot read image {self.files[i]}: {exc} "
                                   f"(drop --strict to skip such files)") from None
            return None, self.labels[i], self.files[i], f"{type(exc).__name__}: {exc}"
        return self._transform()(im).as_subclass(torch.Tensor), self.labels[i], None, None

    def subset(self, index: torch.Tensor) -> LazyImageFolder:
        idx = index.tolist()
        return LazyImageFolder([self.files[i] for i in idx], [self.labels[i] for i in idx], self.class_names,
                               self.pre, self.train, self.strict)


def collate_skip(batch):
    """Stack the readable images of a batch; return the unreadable ones as (path, reason) pairs."""
    ok = [(x, y) for x, y, _, _ in batch if x is not None]
    bad = [(p, r) for x, _, p, r in batch if x is None]
    if not ok:
        return torch.empty(0, 3, 1, 1, dtype=torch.uint8), torch.empty(0, dtype=torch.int64), bad
    return torch.stack([x for x, _ in ok]), torch.tensor([y for _, y in ok], dtype=torch.int64), bad


# -------------------------------------------------------------------------------------------- CIFAR

CIFAR_LAYOUT = {
    "cifar10": ("cifar-10-batches-py", ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                                        "data_batch_5"], ["test_batch"], "batches.meta", "label_names", "labels"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "meta", "fine_label_names", "fine_labels"),
}


def _cifar_dir(kind: str, root: Path, download: bool) -> Path:
    sub = CIFAR_LAYOUT[kind][0]
    base = root / sub if (root / sub).is_dir() else root if root.name == sub else root / sub
    if base.is_dir():
        return base
    if download:
        from torchvision import datasets as tv_datasets  # only to download (see data.transforms.tv)
        cls = tv_datasets.CIFAR10 if kind == "cifar10" else tv_datasets.CIFAR100
        try:
            root.mkdir(parents=True, exist_ok=True)
            cls(str(root), train=True, download=True)
        except Exception as exc:  # noqa: BLE001  (URLError, timeouts, ...)
            raise UsageError(f"{kind} is not in {root} and could not be downloaded ({type(exc).__name__}); "
                             f"offline, put torchvision's {sub}/ (from the {kind} python tarball) "
                             f"in {root}") from None
        return root / sub
    raise UsageError(f"{kind} is not in {root}: put torchvision's {sub}/ folder there "
                     f"(or run once online to download it)")


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles what CIFAR's python files hold (dicts, lists, strings, numbers, numpy arrays) and
    nothing else: a pickle names the callables it runs, and any name outside ``ALLOWED`` is
    refused, so a crafted file cannot run code (``pickle.load`` would run whatever it names)."""

    ALLOWED = frozenset({
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
    })

    def __init__(self, file, path: Path):
        super().__init__(file, encoding="latin1")  # the files were written by Python 2
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        if (module, name) == ("_codecs", "encode"):  # how Python 3 pickles bytes at protocol 2
            return _latin1_bytes
        raise UsageError(f"{self.path} is not a CIFAR file: it asks to call {module}.{name}, which CIFAR's "
                         f"pickles never do (refused: nothing in it was run)")


def _latin1_bytes(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles of ``bytes`` call it, for latin-1 only."""
    if encoding != "latin1" or not isinstance(text, str):
        raise pickle.UnpicklingError(f"unexpected _codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin1")


def read_cifar_pickle(path: Path) -> dict:
    """One of CIFAR's python files as a dict with ``str`` keys, never running code from it."""
    try:
        with open(path, "rb") as f:
            entry = _ArrayUnpickler(f, path).load()
    except UsageError:
        raise
    except Exception as exc:  # noqa: BLE001  (a damaged pickle raises many types)
        raise UsageError(f"{path} is not a readable CIFAR file: {' '.join(str(exc).split())[:200]}") from None
    if not isinstance(entry, dict):
        raise UsageError(f"{path} is not a CIFAR file: it holds a {type(entry).__name__}, not a dict")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}


def load_cifar(kind: str, root: Path, train: bool, download: bool = True) -> ImageTensors:
    """CIFAR-10/100 in torchvision's on-disk format (python pickles), as uint8 tensors. The pickles
    are read by a restricted unpickler (``read_cifar_pickle``): data files cannot run code."""
    base = _cifar_dir(kind, root, download)
    _, train_files, test_files, meta_file, names_key, labels_key = CIFAR_LAYOUT[kind]
    images, labels = [], []
    for name in [*(train_files if train else test_files), meta_file]:
        if not (base / name).is_file():
            raise UsageError(f"{kind} file missing: {base / name}")
    for name in train_files if train else test_files:
        path = base / name
        entry = read_cifar_pickle(path)
        try:
            images.append(torch.as_tensor(entry["data"], dtype=torch.uint8).view(-1, 3, 32, 32))
            labels += [int(y) for y in entry[labels_key]]
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise UsageError(f"{path} is not a {kind} batch: {type(exc).__name__} {exc}") from None
    meta = read_cifar_pickle(base / meta_file)
    if names_key not in meta:
        raise UsageError(f"{base / meta_file} is not {kind}'s meta file: it has no {names_key!r}")
    class_names = [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in meta[names_key]]
    return ImageTensors(torch.cat(images), torch.tensor(labels, dtype=torch.int64), class_names)


# ---------------------------------------------------------------------------------------- synthetic

def synthetic(n: int, num_classes: int = 10, resolution: int = 32, seed: int = 0) -> ImageTensors:
    """Random images whose class shifts the mean colour: learnable in a few steps (smoke tests)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    labels = labels[torch.randperm(n, generator=g)]
    base = torch.randint(0, 256, (num_classes, 3, 1, 1), generator=g).float()
    noise = torch.randn(n, 3, resolution, resolution, generator=g) * 40
    images = (base[labels] + noise).clamp(0, 255).to(torch.uint8)
    return ImageTensors(images, labels, [f"class_{i}" for i in range(num_classes)])


# ------------------------------------------------------------------------------------------ loading

def held_out_split(n: int, val_size: int | float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train index, val index): a seeded random hold-out of ``val_size`` images (or a fraction)."""
    k = int(round(n * val_size)) if isinstance(val_size, float) and val_size < 1 else int(val_size)
    if not 0 < k < n:
        raise UsageError(f"cannot hold out {val_size} of {n} images for validation")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[k:].sort().values, perm[:k].sort().values


def _memory_ok(n: int, resolution: int) -> bool:
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 << 30
    return n * 3 * resolution * resolution < MEMORY_FRACTION * total


def load_data(spec: str | DataSpec, *, resolution: int | None = None, preset: str | None = None,
              val_size: int | float | None = 0.1, seed: int = 0, strict: bool = False, download: bool = True,
              num_classes: int = 10, class_names: list[str] | None = None,
              train: bool = True) -> DataSplits:
    """Training and validation sets for ``spec``.

    ``preset``: "cifar" (resize to a square, pad-crop augmentation, in memory) or "imagenet"
    (random resized crop / resize + center crop); default: "cifar" for CIFAR, synthetic data and
    folders of small images, else "imagenet". ``val_size``: the held-out share of ``train/`` when
    a folder has no ``val/`` (seeded by ``seed``; ``None`` with ``train=False``: all of ``train/``).
    ``class_names``: the classes a checkpoint knows (evaluation); the folder's must be among them.
    ``train=False``: skip the training split.
    """
    spec = parse_data_spec(spec)
    info: dict = {"data": str(spec)}
    if spec.kind == "synthetic":
        res = resolution or 32
        full = synthetic(spec.size + max(spec.size // 4, 2 * num_classes), num_classes, res, seed=seed)
        tr, va = torch.arange(spec.size), torch.arange(spec.size, len(full))
        pre = _preset(preset or "cifar", res, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
        return DataSplits(full.subset(tr), full.subset(va), full.class_names, pre, info)
    if spec.kind in ("cifar10", "cifar100"):
        if not spec.path.exists() and not download:
            raise UsageError(f"no such directory: {spec.path}")
        mean, std = STATS[spec.kind]
        val = load_cifar(spec.kind, spec.path, train=False, download=download)
        tr = load_cifar(spec.kind, spec.path, train=True, download=download) if train else val.subset(
            torch.arange(0))
        res = resolution or 32
        pre = _preset(preset or "cifar", res, mean, std)
        if res != 32:
            tr, val = _resize(tr, res), _resize(val, res)
        info["val"] = "test split"
        return DataSplits(tr, val, val.class_names, pre, info)
    return _load_folder(spec.path, resolution, preset, val_size, seed, strict, class_names, train, info)


def _resize(data: ImageTensors, res: int) -> ImageTensors:
    data.images = tv().functional.resize(data.images, [res, res], antialias=True)
    return data


def _preset(kind: str, res: int, mean=CIFAR10_MEAN, std=CIFAR10_STD) -> Preprocessing:
    if kind == "cifar":
        return cifar(res, mean, std)
    if kind == "imagenet":
        return imagenet(res)
    raise UsageError(f"preset must be 'cifar' or 'imagenet', got {kind!r}")


def _load_folder(root: Path, resolution: int | None, preset: str | None, val_size, seed: int, strict: bool,
                 class_names: list[str] | None, train: bool, info: dict) -> DataSplits:
    if not root.is_dir():
        raise UsageError(f"no such directory: {root}")
    has_train, has_val = (root / "train").is_dir(), (root / "val").is_dir()
    if not has_train and not has_val:
        raise UsageError(f"{root} must hold train/<class>/ (and optionally val/<class>/) folders")
    if has_train:
        tr_files, tr_labels, names = scan_folder(root / "train", class_names)
    else:  # evaluation of a val/ tree only
        tr_files, tr_labels, names = [], [], None
    if has_val:
        va_files, va_labels, names = scan_folder(root / "val", names if names is not None else class_names)
        info["val"] = str(root / "val")
    elif not train and val_size is None:  # evaluate on the whole train/ tree
        va_files, va_labels = tr_files, tr_labels
        info["val"] = str(root / "train")
    else:
        tr_idx, va_idx = held_out_split(len(tr_files), val_size, seed)
        va_files, va_labels = [tr_files[i] for i in va_idx], [tr_labels[i] for i in va_idx]
        tr_files, tr_labels = [tr_files[i] for i in tr_idx], [tr_labels[i] for i in tr_idx]
        info.update(val=f"held out of {root / 'train'}", val_size=len(va_files), split_seed=seed)
    if not train:
        tr_files, tr_labels = [], []
    largest = probe_size(va_files or tr_files)
    kind = preset or ("cifar" if largest and largest <= SMALL_IMAGE else "imagenet")
    res = resolution or (largest if kind == "cifar" and largest else 224)
    pre = _preset(kind, res, *((CIFAR10_MEAN, CIFAR10_STD) if kind == "cifar" else ()))
    n = len(tr_files) + len(va_files)
    if kind == "cifar" and _memory_ok(n, res):
        info["storage"] = "memory"
        trd = decode_files(tr_files, tr_labels, res, names, strict=strict)
        vad = decode_files(va_files, va_labels, res, names, strict=strict)
        return DataSplits(trd, vad, names, pre, info)
    info["storage"] = "lazy"
    return DataSplits(LazyImageFolder(tr_files, tr_labels, names, pre, True, strict),
                      LazyImageFolder(va_files, va_labels, names, pre, False, strict), names, pre, info)
