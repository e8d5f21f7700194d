"""Images in, labelled top-k out, preprocessed exactly as the model says.

``predict`` takes whatever ``weights.resolve_model`` takes (a model, a model name, a checkpoint, a
training run directory, an exported file) or an open runtime ``Session``. The preprocessing and
class names come from the model's metadata (``checkpoint_meta``, or an export's sidecar; an export
without one is fed at the input size its graph declares), so an ImageNet model is resized, cropped
and normalised as its publisher evaluated it and a CIFAR model gets its own transform.

Inputs are checked before any model is loaded: a path that does not exist is a ``UsageError``, and
so is a single image, given alone, that cannot be decoded. In a folder or among several files an
unreadable image is reported by name and skipped: one bad JPEG among thousands should not cost the
other results.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image, ImageOps
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from .core.errors import UsageError
from .core.hardware import resolve_device
from .core.preprocessing import Preprocessing
from .data.labels import class_names_for
from .data.transforms import eval_transform
from .deploy.runtimes import Session, open_session
from .models.network import unwrap
from .weights.resolve import resolve_model

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


@dataclass
class Top:
    label: str
    index: int
    prob: float


@dataclass
class ImagePrediction:
    path: str
    top: list[Top]

    @property
    def label(self) -> str:
        return self.top[0].label


@dataclass
class Skipped:
    path: str
    reason: str


@dataclass
class PredictResult:
    predictions: list[ImagePrediction] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    model: str = ""
    preprocessing: Preprocessing | None = None

    @property
    def ok(self) -> bool:
        """True when every image was read."""
        return not self.skipped

    def to_dict(self) -> dict:
        return {"model": self.model,
                "preprocessing": self.preprocessing.to_dict() if self.preprocessing else None,
                "predictions": [asdict(p) for p in self.predictions],
                "skipped": [asdict(s) for s in self.skipped]}


def find_images(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Files to read: named files as given, folders walked recursively for image extensions
    (sorted, so results are reproducible). A path that does not exist is a ``UsageError``, as is
    finding no image at all."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise UsageError(f"no such file or folder: {', '.join(missing[:3])}"
                         + (f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""))
    files = []
    for p in paths:
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
        else:
            files.append(p)
    if not files:
        raise UsageError("no images found in " + ", ".join(map(str, paths[:3]))
                         + " (looked for " + ", ".join(sorted(IMAGE_EXTENSIONS)) + ")")
    return files


def _inputs(paths) -> list[Path]:
    """``find_images``; a single file given alone must also decode (a one-line error otherwise)."""
    given = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    files = find_images(given)
    if len(given) == 1 and not Path(given[0]).is_dir():
        try:
            load_image(files[0])
        except Exception as exc:  # noqa: BLE001 -- any decoder failure means "unreadable"
            raise UsageError(f"cannot read image {files[0]}: {_reason(exc)}") from None
    return files


def _reason(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:300]


def load_image(path: str | os.PathLike) -> Image.Image:
    """Decode fully (so truncation shows here), honour EXIF orientation, convert to RGB."""
    with Image.open(path) as im:
        im.load()
        im = ImageOps.exif_transpose(im)
        if im.mode == "P" and "transparency" in im.info:
            im = im.convert("RGBA")
        return im.convert("RGB")


@torch.inference_mode()
def predict(target, paths, top: int = 5, batch_size: int = 32, *, weights: str | os.PathLike | None = None,
            preprocessing: Preprocessing | None = None, class_names: list[str] | None = None,
            device: str | torch.device | None = None, backend: str | None = None,
            progress: bool = False) -> PredictResult:
    """Top-``top`` classes (label, index, probability) for every image in ``paths``.

    ``target``: what ``weights.resolve_model`` takes, or an open runtime ``Session``; exported files
    run in their runtime. ``weights``: with a model name, a checkpoint file, a source tag or "random"
    (a bare name gets its default published weights). ``preprocessing``/``class_names`` override what the model
    says. ``device``: default the model's (exports run where their runtime runs; "cuda" runs an
    ONNX file on ONNX Runtime's CUDA provider). ``backend``: run a model on another runtime
    (``deploy.runtimes``: "compile", "cudagraphs", "executorch"... the model converted for it) or
    an exported file on another runtime that opens it. ``progress``: a bar on stderr.
    """
    if top < 1 or batch_size < 1:
        raise UsageError(f"top and batch_size must be >= 1, got top={top}, batch_size={batch_size}")
    files = _inputs(paths)
    if isinstance(target, Session):
        return _predict_session(target, files, top, batch_size, preprocessing=preprocessing,
                                class_names=class_names, progress=progress)
    was_training = unwrap(target).training if isinstance(target, nn.Module) else False
    resolved = resolve_model(target, weights, pretrained=True)
    explicit = None if device is None or str(device) == "auto" else str(resolve_device(str(device)))
    if backend in ("compile", "cudagraphs") and explicit is None:
        explicit = str(resolve_device("auto"))
    if resolved.is_export or (backend is not None and backend != "torch"):
        session = open_session(resolved.path if resolved.is_export else resolved.model, backend, device=explicit)
        return _predict_session(session, files, top, batch_size, preprocessing=preprocessing,
                                class_names=class_names or (None if resolved.is_export else resolved.class_names),
                                progress=progress)
    model = resolved.model
    num_classes = model.config.num_classes
    if class_names is not None and len(class_names) != num_classes:
        raise UsageError(f"{len(class_names)} class names for a model with {num_classes} classes")
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    else:
        device = resolve_device(str(device))
    pre = preprocessing or resolved.preprocessing
    result = PredictResult(model=resolved.name, preprocessing=pre)
    model.to(device).eval()
    try:
        _run(lambda x: model(x.to(device)).float().cpu(), files, result, pre, class_names or resolved.class_names,
             top, batch_size, progress)
    finally:
        model.train(was_training)
    return result


def _predict_session(session: Session, files: list[Path], top: int, batch_size: int, *, preprocessing,
                     class_names, progress) -> PredictResult:
    """``predict`` through a runtime ``Session``: the export's sidecar preprocessing, else the
    default preprocessing at the input size the graph declares."""
    pre = preprocessing or session.feed()
    name = Path(session.path).stem if session.path else session.backend
    result = PredictResult(model=name, preprocessing=pre)
    _run(lambda x: torch.from_numpy(session.run(x.numpy())), files, result, pre,
         class_names or session.class_names, top, batch_size, progress)
    return result


def _run(logits_of, files: list[Path], result: PredictResult, pre: Preprocessing, names, top: int,
         batch_size: int, progress: bool) -> None:
    """Decode, batch, softmax and top-k ``files`` into ``result``; unreadable files are skipped."""
    transform = eval_transform(pre)
    with _Bar(len(files), progress) as advance:
        for start in range(0, len(files), batch_size):
            batch_files, tensors = [], []
            for f in files[start:start + batch_size]:
                try:
                    tensors.append(transform(load_image(f)))
                    batch_files.append(f)
                except Exception as exc:  # noqa: BLE001 -- any decoder failure means "unreadable"
                    result.skipped.append(Skipped(str(f), _reason(exc)))
            if tensors:
                probs = logits_of(torch.stack(tensors)).softmax(dim=1)
                labels = class_names_for(probs.shape[1], names)
                values, indices = probs.topk(min(top, probs.shape[1]), dim=1)
                for f, vs, ix in zip(batch_files, values.tolist(), indices.tolist(), strict=True):
                    tops = [Top(labels[i], i, v) for v, i in zip(vs, ix, strict=True)]
                    result.predictions.append(ImagePrediction(str(f), tops))
            advance(len(files[start:start + batch_size]))


class _Bar:
    """A rich progress bar over images on stderr, or nothing."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self._progress = total, enabled, None

    def __enter__(self):
        if not self.enabled:
            return lambda n: None
        self._progress = Progress(TextColumn("predict"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                  console=Console(stderr=True), transient=True)
        self._progress.start()
        task = self._progress.add_task("predict", total=self.total)
        return lambda n: self._progress.advance(task, n)

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.stop()
        return False
