"""Images in, labelled top-k out, preprocessed exactly as the checkpoint says.

The preprocessing and class names come from the model's ``checkpoint_meta`` (written by
``save_checkpoint`` or set by the converters), so an ImageNet model is resized, cropped and
normalised as its publisher evaluated it and a CIFAR model gets its own transform. Files
that cannot be read are reported by name and skipped, never fatal: one bad JPEG in a folder
of thousands should not cost the other results.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image, ImageOps

from .core.errors import UsageError
from .core.preprocessing import Preprocessing, cifar, imagenet
from .data.labels import class_names_for
from .data.transforms import eval_transform
from .weights.resolve import is_export

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


def find_images(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> tuple[list[Path], list[Skipped]]:
    """Files to read: named files as given, directories walked recursively for image
    extensions (sorted, so results are reproducible); missing paths are skipped."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files, skipped = [], []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
        elif p.is_file():
            files.append(p)
        else:
            skipped.append(Skipped(str(p), "no such file or directory"))
    return files, skipped


def _inputs(paths) -> tuple[list[Path], list[Skipped]]:
    files, skipped = find_images(paths)
    if not files and not skipped:
        raise UsageError("no images found (looked for " + ", ".join(sorted(IMAGE_EXTENSIONS)) + ")")
    return files, skipped


def load_image(path: str | os.PathLike) -> Image.Image:
    """Decode fully (so truncation shows here), honour EXIF orientation, convert to RGB."""
    with Image.open(path) as im:
        im.load()
        im = ImageOps.exif_transpose(im)
        if im.mode == "P" and "transparency" in im.info:
            im = im.convert("RGBA")
        return im.convert("RGB")


def _load_model(model_or_checkpoint):
    if isinstance(model_or_checkpoint, torch.nn.Module):
        return model_or_checkpoint
    if isinstance(model_or_checkpoint, (str, os.PathLike)):
        from .weights import load_checkpoint
        return load_checkpoint(model_or_checkpoint)[0]
    raise UsageError(f"predict needs a model or a checkpoint path, got {type(model_or_checkpoint).__name__}")


def _defaults(model) -> tuple[str, Preprocessing, list[str] | None]:
    meta = getattr(model, "checkpoint_meta", None)
    config = getattr(model, "config", None)
    res = getattr(config, "resolution", 224)
    fallback = cifar(res) if getattr(config, "cifar_stem", 0) else imagenet(res)
    if meta is None:
        return getattr(config, "family", type(model).__name__), fallback, None
    return meta.variant or config.family, meta.preprocessing or fallback, meta.class_names


@torch.inference_mode()
def predict(model_or_checkpoint, paths, top: int = 5, batch_size: int = 32, *,
            preprocessing: Preprocessing | None = None, class_names: list[str] | None = None,
            device: str | torch.device | None = None, progress: bool = False) -> PredictResult:
    """Top-``top`` classes (label, index, probability) for every image in ``paths``.

    ``model_or_checkpoint``: a model (``create_model(..., pretrained=...)``, ``load_checkpoint``),
    the path of one of our checkpoints, or an exported file (.onnx, .xml, .tflite) or ``Session``,
    run in its runtime with the preprocessing and class names of its sidecar.
    ``preprocessing``/``class_names`` override what the checkpoint says. ``device``: default the
    model's. ``progress``: a bar on stderr.
    """
    if top < 1 or batch_size < 1:
        raise UsageError(f"top and batch_size must be >= 1, got top={top}, batch_size={batch_size}")
    if is_export(model_or_checkpoint):
        return _predict_export(model_or_checkpoint, paths, top, batch_size, preprocessing=preprocessing,
                               class_names=class_names, progress=progress)
    model = _load_model(model_or_checkpoint)
    name, pre, names = _defaults(model)
    pre = preprocessing or pre
    files, skipped = _inputs(paths)
    num_classes = getattr(getattr(model, "config", None), "num_classes", None)
    if class_names is not None and num_classes is not None and len(class_names) != num_classes:
        raise UsageError(f"{len(class_names)} class names for a model with {num_classes} classes")
    param = next(model.parameters(), None)
    if device is None:
        device = param.device if param is not None else "cpu"
    device = torch.device(device)
    was_training = model.training
    model.to(device).eval()
    result = PredictResult(model=name, preprocessing=pre, skipped=skipped)
    try:
        _run(lambda x: model(x.to(device)).float().cpu(), files, result, pre, class_names or names, top,
             batch_size, progress)
    finally:
        model.train(was_training)
    return result


def _predict_export(target, paths, top: int, batch_size: int, *, preprocessing, class_names, progress):
    """``predict`` on an exported file: the runtime's Session, the export's sidecar preprocessing."""
    from .deploy.runtimes import open_session
    session = open_session(target) if isinstance(target, (str, os.PathLike)) else target
    pre = preprocessing or session.preprocessing or imagenet(session.resolution or 224)
    files, skipped = _inputs(paths)
    name = Path(session.path).stem if getattr(session, "path", None) else session.backend
    result = PredictResult(model=name, preprocessing=pre, skipped=skipped)
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
                    result.skipped.append(Skipped(str(f), " ".join(f"{type(exc).__name__}: {exc}".split())))
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
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
        self._progress = Progress(TextColumn("predict"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                  console=Console(stderr=True), transient=True)
        self._progress.start()
        task = self._progress.add_task("predict", total=self.total)
        return lambda n: self._progress.advance(task, n)

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.stop()
        return False
