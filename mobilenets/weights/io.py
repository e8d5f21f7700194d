"""Our checkpoint format: safetensors tensors + a small JSON metadata record.

The record (``ModelConfig``, ``Preprocessing``, class names, variant) is what makes a file
self-describing: ``load_checkpoint`` rebuilds the exact model and ``predict`` preprocesses
exactly as training did. Loading never executes code: safetensors, or ``torch.load`` with
``weights_only=True`` for foreign ``.pth`` files. Writes are atomic (temp file in the same
directory, fsync, rename) so a crash never leaves a truncated checkpoint under the real name.
"""
from __future__ import annotations

import os
import pickle
from functools import lru_cache
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save
from torch import nn

from ..core.errors import UsageError
from ..core.files import atomic_write
from ..core.preprocessing import Preprocessing, cifar, imagenet
from ..models.meta import FORMAT, CheckpointMeta
from ..models.network import MobileNet, ModelConfig, unwrap
from ..models.registry import VARIANTS

SAFETENSORS = (".safetensors",)
PICKLES = (".pth", ".pt", ".bin", ".ckpt", ".tar")


QAT_PREFIX = "qat."  # keys of a QAT checkpoint's quantization state (train.qat.PREFIX)


def save_checkpoint(path: str | os.PathLike, model: nn.Module, *, preprocessing: Preprocessing | None = None,
                    class_names: list[str] | None = None, variant: str | None = None,
                    extra: dict | None = None) -> Path:
    """Write ``model`` as ``path`` (safetensors + metadata), atomically; returns the path.

    Defaults come from ``model.checkpoint_meta`` when the model was loaded from a checkpoint,
    else ImageNet preprocessing at the model's resolution (CIFAR's for a CIFAR stem).
    """
    model = unwrap(model)
    if not isinstance(getattr(model, "config", None), ModelConfig):
        raise UsageError(f"save_checkpoint needs a MobileNet, got {type(model).__name__}")
    config: ModelConfig = model.config
    old = getattr(model, "checkpoint_meta", None) or CheckpointMeta()
    if preprocessing is None:
        default = cifar if config.cifar_stem else imagenet
        preprocessing = old.preprocessing or default(config.resolution)
    if class_names is None and old.class_names and len(old.class_names) == config.num_classes:
        class_names = old.class_names
    if class_names is not None and len(class_names) != config.num_classes:
        raise UsageError(f"{len(class_names)} class names for a model with {config.num_classes} classes")
    meta = CheckpointMeta(variant or old.variant or config.family, config, preprocessing,
                          None if class_names is None else [str(c) for c in class_names],
                          {**old.extra, **(extra or {})})
    state = model.checkpoint_tensors() if hasattr(model, "checkpoint_tensors") else model.state_dict()
    tensors = {k: v.detach().to("cpu").clone(memory_format=torch.contiguous_format)
               for k, v in state.items()}  # clone: no shared or partial storages
    data = save(tensors, metadata=meta.to_metadata())
    return atomic_write(Path(path), data)


def read_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(state dict, safetensors metadata) of a weights file, never running code from it.

    safetensors files hold tensors only; anything else goes through ``torch.load(weights_only=True)``,
    whose unpickler builds tensors and plain containers and refuses every other object. The usual
    wrappers (``{"state_dict": ...}``, ``{"model": ...}``) are unwrapped. A file that is neither
    (text, an image, a damaged download) is a one-line ``UsageError`` naming it.
    """
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path} is a folder, not a checkpoint file")
    if not path.is_file():
        raise UsageError(f"no such checkpoint: {path}")
    if path.suffix in (".h5", ".keras"):
        raise UsageError(f"{path} is a Keras file: convert it with "
                         f"`mobilenets convert {path} --from keras --model NAME -o OUT.safetensors`")
    if path.suffix in SAFETENSORS or _is_safetensors(path):
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
            return load_file(str(path)), metadata
        except (SafetensorError, OSError, ValueError) as exc:
            raise UsageError(f"{path} is not a readable safetensors file: {_one_line(exc)}") from None
    if not _is_torch_file(path):
        raise UsageError(f"{path} is not a checkpoint: neither a safetensors file nor a PyTorch file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UsageError(f"{path} needs code to unpickle and weights_only loading refused it "
                         f"({_one_line(exc, first=True)})") from None
    except Exception as exc:  # noqa: BLE001 -- a damaged file raises KeyError, RuntimeError, EOFError...
        raise UsageError(f"{path} is not a readable PyTorch checkpoint: {_one_line(exc)}") from None
    return _unwrap_state_dict(obj, path), {}


def _one_line(exc: BaseException, first: bool = False, limit: int = 200) -> str:
    text = str(exc).strip()
    if first:
        text = text.splitlines()[0] if text else ""
    return " ".join(text.split())[:limit] or type(exc).__name__


def _is_torch_file(path: Path) -> bool:
    """``torch.save`` writes a zip archive (``PK``) or, in the legacy format, a pickle (0x80, protocol)."""
    with open(path, "rb") as f:
        head = f.read(2)
    return head[:2] == b"PK" or (len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def _is_safetensors(path: Path) -> bool:
    """safetensors files start with an 8-byte header length then a JSON object."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _unwrap_state_dict(obj, path: Path) -> dict[str, torch.Tensor]:
    for key in ("state_dict_ema", "model_ema", "state_dict", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UsageError(f"{path} is not a state dict (a mapping of names to tensors)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_checkpoint(path: str | os.PathLike, *, config: ModelConfig | None = None,
                    device: str | torch.device = "cpu") -> tuple[MobileNet, CheckpointMeta]:
    """(model, metadata) from one of our checkpoints; the model is rebuilt from the stored
    config (or ``config`` for bare weight files) and loaded strictly, in eval mode."""
    tensors, metadata = read_weights(path)
    model = from_weights(tensors, metadata, what=str(path), config=config)
    return model.to(device).eval(), model.checkpoint_meta


def is_ours(metadata: dict[str, str]) -> bool:
    return metadata.get("format") == FORMAT


def from_weights(tensors: dict[str, torch.Tensor], metadata: dict[str, str], *, what: str,
                 config: ModelConfig | None = None) -> MobileNet:
    """A ``MobileNet`` from tensors + our metadata (its config wins over ``config``)."""
    meta = CheckpointMeta.from_metadata(metadata if is_ours(metadata) else {})
    config = meta.config or config
    if config is None:
        raise UsageError(f"{what} has no mobilenets metadata; if it comes from torchvision, timm or Keras, "
                         f"convert it: `mobilenets convert {what} --from FORMAT --model NAME -o OUT.safetensors`")
    meta.config = config
    model = MobileNet(config)
    # a quantization-aware run's checkpoint: float weights, plus its learned quantization state
    qat_state = {k: v for k, v in tensors.items() if k.startswith(QAT_PREFIX)} if meta.extra.get("qat") else {}
    load_strict(model, {k: v for k, v in tensors.items() if k not in qat_state}, what=what, name=meta.variant)
    model.checkpoint_meta = meta
    if qat_state:
        model.qat_state = qat_state
    return model.eval()


def load_strict(model: MobileNet, state_dict: dict[str, torch.Tensor], *, what: str = "checkpoint",
                name: str | None = None) -> MobileNet:
    """``model.load_state_dict`` that fails with one line naming missing and unexpected keys,
    shape conflicts, and the variant whose shapes the weights do fit, when one does."""
    ours = model.state_dict()
    missing = [k for k in ours if k not in state_dict]
    unexpected = [k for k in state_dict if k not in ours]
    conflicts = [f"{k} {list(state_dict[k].shape)} vs {list(v.shape)}" for k, v in ours.items()
                 if k in state_dict and state_dict[k].shape != v.shape]
    if missing or unexpected or conflicts:
        label = name or model.config.family
        parts = [f"{what} does not fit {label} (width {model.config.width}, {model.config.num_classes} classes)"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("shape conflicts", conflicts)):
            if items:
                parts.append(f"{len(items)} {title}: {_few(items)}")
        fits = suggest_variant(state_dict, prefer=model.config.family)
        if fits:
            parts.append(f"the shapes fit {fits}")
        raise UsageError("; ".join(parts))
    model.load_state_dict(state_dict, strict=True)
    return model


def _few(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "")


def suggest_variant(state_dict: dict[str, torch.Tensor], prefer: str | None = None) -> str | None:
    """The registry variant (or family + width) whose parameter shapes equal ``state_dict``'s.

    A family whose key names differ at its first width is skipped whole, so an error costs a
    handful of model builds, not one per registry entry. ``prefer``: a family to try first.
    """
    head = state_dict.get("classifier.weight")
    stem = state_dict.get("stem.conv.weight")
    if head is None or stem is None or head.ndim != 2 or stem.ndim != 4:
        return None
    want = {k: tuple(v.shape) for k, v in state_dict.items()}
    widths: dict[str, list[float]] = {}
    for v in VARIANTS.values():
        if v.width not in widths.setdefault(v.family, []):
            widths[v.family].append(v.width)
    for family in sorted(widths, key=lambda f: f != prefer):
        for i, width in enumerate(sorted(widths[family], key=lambda w: w != 1.0)):
            rules = [()] + ([(("expand_rule", "scale"), ("head_rule", "scale"))] if width != 1.0 else [])
            for rule in rules:
                shapes = _shapes(family, width, rule, int(head.shape[0]), int(stem.shape[1]))
                if shapes is None or shapes.keys() != want.keys():
                    break
                if shapes == want:
                    named = [n for n, x in VARIANTS.items()
                             if x.family == family and x.width == width and x.resolution == 224 and n != family]
                    label = f"{family} with width={width}" + (f" ({named[0]})" if named else "")
                    return label + (" and torchvision's channel rules" if rule else "")
            else:
                continue
            if i == 0:
                break  # other key names than this family's: skip its other widths
    return None


@lru_cache(maxsize=64)
def _shapes(family: str, width: float, rules: tuple, num_classes: int, in_chans: int) -> dict | None:
    """State-dict shapes of one configuration, built on the meta device (no memory)."""
    try:
        cfg = ModelConfig(family=family, width=width, num_classes=num_classes, in_chans=in_chans, **dict(rules))
        with torch.device("meta"):
            return {k: tuple(t.shape) for k, t in MobileNet(cfg).state_dict().items()}
    except (UsageError, ValueError, RuntimeError):
        return None
