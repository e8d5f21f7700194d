"""``resolve_model(target)``: the one answer to "what is this thing the user named?".

A target is a model name (``mobilenet_v3_small``), one of our checkpoints (``best.safetensors``),
a foreign checkpoint given with a name (``mobilenet_v2`` + ``-w mobilenet_v2-7ebf99e0.pth``), a
training run directory (its ``best.safetensors``), an exported file (``.onnx``, ``.xml``,
``.tflite``...: run in its runtime, described by its JSON sidecar), or a module already built.
Every verb (predict, eval, export, bench) asks this function, so they accept the same things
and say the same thing when a target is wrong.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..core.errors import UsageError
from ..core.files import PACKAGE_SUFFIXES
from ..core.preprocessing import Preprocessing, default_preprocessing
from ..models.meta import CheckpointMeta
from ..models.network import MobileNet, ModelConfig, unwrap
from ..models.registry import get_variant
from .io import from_weights, is_ours, load_checkpoint, read_weights
from .pretrained import create_model

# Files that run in their own runtime (deploy.runtimes: each runtime's suffix; a test keeps the two equal);
# the sidecar says how to feed them. A Core ML .mlpackage is a folder.
EXPORT_SUFFIXES = frozenset({".onnx", ".xml", ".tflite", ".pte", ".param", ".mnn", ".mlpackage"})
CHECKPOINT_SUFFIXES = frozenset({".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".tar", ".h5"})
RUN_CHECKPOINTS = ("best.safetensors", "last.safetensors")


@dataclass
class Resolved:
    """What to run and how to feed it. ``model`` is set for PyTorch targets (eval mode), ``path``
    for files; ``meta`` always (for exports, read from the sidecar: possibly partial)."""
    kind: str                      # "module" | "name" | "checkpoint" | "run" | "export"
    meta: CheckpointMeta
    model: MobileNet | None = None
    path: Path | None = None

    @property
    def is_export(self) -> bool:
        return self.kind == "export"

    @property
    def name(self) -> str:
        if self.meta.variant:
            return self.meta.variant
        if self.meta.config is not None:
            return self.meta.config.family
        return self.path.stem if self.path is not None else "model"

    @property
    def preprocessing(self) -> Preprocessing | None:
        return self.meta.preprocessing

    @property
    def class_names(self) -> list[str] | None:
        return self.meta.class_names


def sidecar_path(path: str | os.PathLike) -> Path:
    """``model.onnx`` -> ``model.json``: where an export records preprocessing and class names."""
    return Path(path).with_suffix(".json")


def read_sidecar(path: str | os.PathLike) -> dict:
    """The export's sidecar as a dict ({} when there is none); a damaged one is a ``UsageError``."""
    side = sidecar_path(path)
    if not side.is_file():
        return {}
    try:
        data = json.loads(side.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"{side} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{side} is not an export sidecar (a JSON object)")
    return data


def sidecar_meta(path: str | os.PathLike) -> CheckpointMeta:
    """An export's metadata as a ``CheckpointMeta`` (fields the sidecar lacks are ``None``)."""
    side = read_sidecar(path)
    try:
        config = ModelConfig.from_dict(side["config"]) if isinstance(side.get("config"), dict) else None
        pre = Preprocessing.from_dict(side["preprocessing"]) if isinstance(side.get("preprocessing"), dict) else None
    except (TypeError, ValueError, KeyError) as exc:
        raise UsageError(f"{sidecar_path(path)} is damaged: {exc}") from None
    names = side.get("class_names")
    extra = {k: v for k, v in side.items() if k not in ("config", "preprocessing", "class_names", "model")}
    return CheckpointMeta(side.get("model"), config, pre, list(names) if names else None, extra)


def is_export(target) -> bool:
    """An exported file (by suffix) or an open runtime ``Session``."""
    if isinstance(target, (str, os.PathLike)):
        return Path(target).suffix.lower() in EXPORT_SUFFIXES
    return hasattr(target, "run") and hasattr(target, "backend")


def _looks_like_path(target: str) -> bool:
    return (os.sep in target or Path(target).suffix.lower() in CHECKPOINT_SUFFIXES | EXPORT_SUFFIXES
            or os.path.exists(target))


def _meta_of(model: MobileNet) -> CheckpointMeta:
    meta = model.checkpoint_meta
    if meta is None:
        meta = CheckpointMeta(model.config.family, model.config)
    if meta.config is None:
        meta.config = model.config
    if meta.preprocessing is None:
        meta.preprocessing = default_preprocessing(model.config.resolution, cifar_stem=model.config.cifar_stem)
    return meta


def _module(model: nn.Module, kind: str, path: Path | None = None) -> Resolved:
    model = unwrap(model)
    if not isinstance(model, MobileNet):
        raise UsageError(f"expected a mobilenets MobileNet, got {type(model).__name__}")
    return Resolved(kind, _meta_of(model), model.eval(), path)


def _check_same(name: str, model: MobileNet, path: Path) -> None:
    """A checkpoint given with a name must hold that model: a family name accepts any width
    stored in the file, a full variant name must match it."""
    v, got = get_variant(name), model.config
    if got.family != v.family or (name != v.family and got.width != v.width):
        raise UsageError(f"{path} holds {(model.checkpoint_meta and model.checkpoint_meta.variant) or got.family} "
                         f"(family {got.family}, width {got.width}), not {name}")


def resolve_model(target, weights: str | os.PathLike | None = None, *, pretrained: bool | str = False,
                  **options) -> Resolved:
    """Resolve ``target`` (see the module docstring) into a ``Resolved``.

    ``weights``: with a model name, a checkpoint file, a source tag ("timm.tf_in1k") or "random"/"none".
    ``pretrained``: what a bare model name gets when ``weights`` is not given (False: random
    initialisation, True: the default published checkpoint). ``options`` go to ``create_model``
    for names (``num_classes``, ``cifar_stem``...).
    """
    if isinstance(target, nn.Module):
        return _module(target, "module")
    if not isinstance(target, (str, os.PathLike)):
        raise UsageError(f"expected a model name, a checkpoint or an exported file, got {type(target).__name__}")
    text = os.fspath(target)
    if weights is not None and is_export(weights):
        target, text, weights = weights, os.fspath(weights), None
    path = Path(text).expanduser()
    if path.is_dir() and path.suffix.lower() not in PACKAGE_SUFFIXES:
        if weights is not None:
            raise UsageError(f"{path} is a folder; give either a run directory or a model name with --weights")
        for candidate in RUN_CHECKPOINTS:
            if (path / candidate).is_file():
                model, _ = load_checkpoint(path / candidate)
                return _module(model, "run", path / candidate)
        raise UsageError(f"{path} is a folder without {' or '.join(RUN_CHECKPOINTS)} (not a training run directory)")
    if is_export(path):
        if not (path.is_file() or (path.is_dir() and path.suffix.lower() in PACKAGE_SUFFIXES)):
            raise UsageError(f"no such model file: {path}")
        return Resolved("export", sidecar_meta(path), None, path)
    if weights is None and _looks_like_path(text):
        if not path.is_file():
            raise UsageError(f"no such checkpoint: {path}")
        model, _ = load_checkpoint(path)
        return _module(model, "checkpoint", path)
    name = text
    get_variant(name)  # an unknown name fails here, before any file is read
    if weights is None:
        return _module(create_model(name, pretrained=pretrained, **options), "name")
    if str(weights) in ("random", "none"):
        return _module(create_model(name, **options), "name")
    wpath = Path(weights).expanduser()
    if wpath.suffix == ".safetensors" and wpath.is_file():
        tensors, metadata = read_weights(wpath)
        if is_ours(metadata):
            model = from_weights(tensors, metadata, what=str(wpath))
            _check_same(name, model, wpath)
            return _module(model, "checkpoint", wpath)
    model = create_model(name, pretrained=os.fspath(weights), **options)
    return _module(model, "checkpoint" if wpath.is_file() else "name", wpath if wpath.is_file() else None)
