"""Models with weights: ``create_model(name, pretrained=...)``, foreign checkpoints (torchvision,
timm, Keras) converted on load, and ``convert_file`` for ``mobilenets convert``."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..core.errors import UsageError
from ..core.preprocessing import default_preprocessing
from ..models.backbone import FeatureNet, features
from ..models.meta import CheckpointMeta
from ..models.network import MobileNet, ModelConfig
from ..models.registry import build_model, model_config
from . import sources
from .convert import convert
from .hub import fetch
from .io import from_weights, is_ours, read_weights, save_checkpoint
from .sources import FORMATS, WeightSource, find_source, sources_for


def create_model(name: str, pretrained: bool | str | os.PathLike = False, width: float | None = None,
                 num_classes: int = 1000, resolution: int | None = None, *, features_only: bool = False,
                 out_indices: Sequence[int] | None = None, **kwargs) -> MobileNet | FeatureNet:
    """Build a MobileNet by name, with weights when ``pretrained`` is given.

    ``create_model("mobilenet_v2", width=0.5, num_classes=10)``; ``create_model("mobilenet_v1_025_128")``.
    Other options: ``in_chans``, ``dropout``, ``cifar_stem``, ``tf_same``, ``bn_eps``,
    ``identity_mult`` (MobileNeXt), ``output_stride`` (32, 16 or 8: dilation), ``reduced_tail`` (V3).
    ``pretrained``: True (the default source), a source name or a path to a checkpoint.
    ``features_only``: the backbone (``models.backbone.FeatureNet``) returning the feature maps at
    ``out_indices`` (default: all five), with ``feature_info`` as in timm.
    """
    if out_indices is not None and not features_only:
        raise UsageError("out_indices chooses feature maps: pass features_only=True with it")
    if features_only:
        return features(create_model(name, pretrained, width, num_classes, resolution, **kwargs), out_indices)
    if not pretrained:
        model = build_model(name, width, num_classes, resolution, **kwargs)
        config = model.config
        model.checkpoint_meta = CheckpointMeta(name, config, default_preprocessing(config.resolution,
                                                                                 cifar_stem=config.cifar_stem))
        return model
    config = model_config(name, width, resolution, num_classes=num_classes, **kwargs)
    return load_pretrained(name, config, pretrained)


# Options a user may set on top of pretrained weights: they change no tensor shape.
_FREE_OPTIONS = ("resolution", "dropout", "cifar_stem", "output_stride", "dilation_rule")


def load_pretrained(name: str, config: ModelConfig, pretrained: bool | str | os.PathLike) -> MobileNet:
    """The model ``create_model(name, pretrained=...)`` returns.

    ``pretrained``: True (the variant's default checkpoint), a source tag or format
    ("torchvision.IMAGENET1K_V1", "timm.tf_in1k", "keras"), or a file. A registry checkpoint
    takes the requested ``resolution``/``dropout``/``cifar_stem``; our own checkpoint files keep
    the config they store. A ``num_classes`` other than the default 1000 that differs from the
    checkpoint's gets a freshly initialised classifier (fine-tuning).
    """
    if config.in_chans != 3:
        raise UsageError(f"pretrained weights take 3 input channels, not in_chans={config.in_chans}")
    if _is_path(pretrained):
        model = _load_file(Path(pretrained), name, config)
    else:
        source = find_source(name, pretrained, width=config.width)
        path = fetch(source.url, source.filename, sha256=source.sha256, md5=source.md5)
        model = load_foreign(path, source.format, name, width=config.width, source=source,
                             **{k: getattr(config, k) for k in _FREE_OPTIONS})
    if config.num_classes != model.config.num_classes and config.num_classes != 1000:
        model.reset_classifier(config.num_classes)
        model.checkpoint_meta.config, model.checkpoint_meta.class_names = model.config, None
    return _with_layout(model, config).eval()


def _with_layout(model: MobileNet, config: ModelConfig) -> MobileNet:
    """``model`` at the output stride asked for: dilation changes no tensor, so a checkpoint's
    weights serve at every output stride."""
    want = {"output_stride": config.output_stride, "dilation_rule": config.dilation_rule}
    if all(getattr(model.config, k) == v for k, v in want.items()):
        return model
    rebuilt = MobileNet(model.config.replace(**want))
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.checkpoint_meta, rebuilt.qat_state = model.checkpoint_meta, model.qat_state
    if rebuilt.checkpoint_meta is not None:
        rebuilt.checkpoint_meta.config = rebuilt.config
    return rebuilt


def _is_path(pretrained) -> bool:
    if isinstance(pretrained, os.PathLike):
        return True
    if not isinstance(pretrained, str):
        return False
    if os.path.isfile(pretrained):
        return True
    if pretrained in FORMATS or any(s.tag == pretrained for s in sources.SOURCES):
        return False
    return os.sep in pretrained or Path(pretrained).suffix in (".safetensors", ".pth", ".pt", ".bin", ".h5")


def _load_file(path: Path, name: str, config: ModelConfig) -> MobileNet:
    """A checkpoint file given as ``pretrained=PATH``: ours, or a foreign one we recognise."""
    if not path.is_file():
        raise UsageError(f"no such checkpoint: {path}")
    if path.suffix == ".h5":
        return load_foreign(path, "keras", name, width=config.width)
    tensors, metadata = read_weights(path)
    if is_ours(metadata):
        model = from_weights(tensors, metadata, what=str(path))
        got = model.config
        if (got.family, got.width) != (config.family, config.width):
            raise UsageError(f"{path} holds {model.checkpoint_meta.variant or got.family} (family {got.family}, "
                             f"width {got.width}), not {name} (width {config.width})")
        return model
    fmt = guess_format(tensors, path)
    if fmt == "mobilenets":  # our key names without our metadata: a bare state dict
        head = tensors.get("classifier.weight")
        cfg = config.replace(num_classes=int(head.shape[0])) if head is not None else config
        model = from_weights(tensors, {}, what=str(path), config=cfg)
        model.checkpoint_meta.variant = name
        model.checkpoint_meta.preprocessing = default_preprocessing(cfg.resolution)
        return model
    return load_foreign(path, fmt, name, width=config.width, tensors=tensors,
                        **{k: getattr(config, k) for k in _FREE_OPTIONS})


def guess_format(tensors: dict, path: Path | str = "checkpoint") -> str:
    """Which implementation wrote a state dict, from its key names."""
    keys = list(tensors)
    if "stem.conv.weight" in tensors:
        return "mobilenets"
    if any(k.startswith("features.") for k in keys):
        return "torchvision"
    if "conv_stem.weight" in tensors:
        return "timm"
    raise UsageError(f"cannot tell which implementation wrote {path} (first key {keys[0] if keys else None!r}); "
                     f"use `mobilenets convert {path} --from torchvision|timm|keras --model NAME -o OUT.safetensors`")


def resolve_source(fmt: str, name: str, width: float | None, path: Path | None = None
                   ) -> tuple[str, WeightSource | None]:
    """(format, registry entry or None) for ``--from``: a format or a source tag. The file name
    picks the exact entry when it is a registry file, and timm's ``tf_*`` files their TF port."""
    if fmt not in FORMATS:
        source = find_source(name, fmt, width)
        return source.format, source
    found = [s for s in sources_for(name, width) if s.format == fmt]
    if path is not None:
        exact = [s for s in found if s.filename == path.name]
        tf = [s for s in found if s.tf == path.name.startswith("tf_")] if fmt == "timm" else []
        found = exact or tf or found
    return fmt, (found[0] if found else None)


def load_foreign(path: str | os.PathLike, fmt: str, name: str, *, width: float | None = None,
                 source: WeightSource | None = None, tensors: dict | None = None, **options) -> MobileNet:
    """Our ``name`` from a torchvision/timm state dict file or a Keras ``.h5`` (``fmt`` a format
    or a source tag), with ``checkpoint_meta`` saying how to preprocess and where it came from."""
    path = Path(path)
    if source is None:
        fmt, source = resolve_source(fmt, name, width, path)
    if fmt == "keras":
        reference = _keras_model(path, name, width)
    else:
        reference = tensors if tensors is not None else read_weights(path)[0]
    tf = source.tf if (source is not None and fmt == "timm") else None
    if fmt == "timm" and tf is None:
        tf = path.name.startswith("tf_")
    model = convert(reference, fmt, name, width=width, **({"tf": tf} if fmt == "timm" else {}), **options)
    resolution = model.config.resolution
    pre = (source.preprocessing.at(resolution) if source
           else default_preprocessing(resolution, source_format=fmt))
    extra = {"format": fmt, "file": path.name}
    if source is not None and source.filename == path.name:  # provenance only when it is that file
        extra.update(source=source.tag, url=source.url, reference=source.reference, top1=source.top1)
    model.checkpoint_meta = CheckpointMeta(name, model.config, pre, None, extra)
    return model.eval()


def _keras_model(path: Path, name: str, width: float | None):
    """The Keras application matching ``name``, with ``path`` loaded (needs keras + h5py)."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras
    except ImportError:
        raise UsageError("loading Keras .h5 weights needs keras and h5py: pip install keras h5py") from None
    cfg = model_config(name, width)
    apps, shape = keras.applications, (cfg.resolution, cfg.resolution, 3)
    builders = {
        "mobilenet_v1": lambda: apps.MobileNet(input_shape=shape, alpha=cfg.width, weights=None),
        "mobilenet_v2": lambda: apps.MobileNetV2(input_shape=shape, alpha=cfg.width, weights=None),
        "mobilenet_v3_large": lambda: apps.MobileNetV3Large(input_shape=shape, alpha=cfg.width, weights=None),
        "mobilenet_v3_small": lambda: apps.MobileNetV3Small(input_shape=shape, alpha=cfg.width, weights=None),
        "mobilenet_v3_large_minimal": lambda: apps.MobileNetV3Large(input_shape=shape, alpha=cfg.width,
                                                                    minimalistic=True, weights=None),
        "mobilenet_v3_small_minimal": lambda: apps.MobileNetV3Small(input_shape=shape, alpha=cfg.width,
                                                                    minimalistic=True, weights=None),
    }
    if cfg.family not in builders:
        raise UsageError(f"Keras has no {cfg.family}")
    model = builders[cfg.family]()
    try:
        model.load_weights(str(path))
    except (ValueError, OSError, KeyError) as exc:
        raise UsageError(f"{path} does not load into Keras {model.name}: {' '.join(str(exc).split())[:300]}") from None
    return model


def convert_file(src: str | os.PathLike, fmt: str, name: str, out: str | os.PathLike, *,
                 width: float | None = None) -> Path:
    """``mobilenets convert``: a torchvision/timm/Keras file -> our safetensors checkpoint."""
    src, out = Path(src), Path(out)
    if not src.is_file():
        raise UsageError(f"no such file: {src}")
    if out.suffix != ".safetensors":
        raise UsageError(f"the output must be a .safetensors file, got {out}")
    model = load_foreign(src, fmt, name, width=width)
    return save_checkpoint(out, model)
