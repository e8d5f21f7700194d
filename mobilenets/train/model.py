"""The model a run trains: built from scratch by name, or loaded (``--weights``) for fine-tuning."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from ..core.errors import UsageError
from ..models.network import MobileNet
from ..weights import create_model, resolve_model
from ..weights.resolve import CHECKPOINT_SUFFIXES
from .config import TrainConfig
from .qat import QATNet
from .report import Reporter


def zero_init_residual(model: nn.Module) -> int:
    """Set the scale of the last BatchNorm of every residual branch to 0, so that each residual block
    starts as the identity (Goyal et al. 2017); returns how many blocks."""
    count = 0
    for block in model.modules():
        if getattr(block, "residual_channels", 0):
            norms = [m for m in block.modules() if isinstance(m, nn.BatchNorm2d)]
            nn.init.zeros_(norms[-1].weight)
            count += 1
    return count


def check_weights(cfg: TrainConfig) -> None:
    """Refuse a ``--weights`` checkpoint file that is not there before any data is read (a weight
    source tag is looked up when the model is built)."""
    path = Path(cfg.weights).expanduser() if cfg.weights else None
    if path is not None and path.suffix.lower() in CHECKPOINT_SUFFIXES and not path.is_file():
        raise UsageError(f"no such checkpoint: {cfg.weights}")


def weights_normalization(cfg: TrainConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean and std the ``--weights`` model was trained with (``--normalize weights``)."""
    pre = resolve_model(cfg.model, cfg.weights).meta.preprocessing
    if pre is None:
        raise UsageError(f"{cfg.weights} records no preprocessing: pick --normalize cifar10, cifar100 or imagenet")
    return tuple(pre.mean), tuple(pre.std)


def build_model(cfg: TrainConfig, num_classes: int, resolution: int, reporter: Reporter) -> MobileNet | QATNet:
    """``cfg.model`` for ``num_classes`` classes at ``resolution``, in training mode: from scratch,
    or from ``cfg.weights`` (a checkpoint or a weight source, as ``weights.resolve_model`` reads
    them) with a fresh classifier when the classes differ; with ``cfg.qat``, prepared for
    quantization-aware training (``train.qat.QATNet``)."""
    model = _float_model(cfg, num_classes, resolution, reporter)
    if not cfg.qat:
        return model
    reporter.log(f"quantization-aware training: fake int8 placed as the {cfg.qat_backend} recipe places it")
    net = QATNet(model, cfg.qat_backend, resolution=resolution)
    net.train()
    return net


def _float_model(cfg: TrainConfig, num_classes: int, resolution: int, reporter: Reporter) -> MobileNet:
    options = dict(width=cfg.width, resolution=resolution, cifar_stem=cfg.cifar_stem, dropout=cfg.dropout)
    if not cfg.weights:
        model = create_model(cfg.model, num_classes=num_classes, **options)
        if cfg.zero_init_residual:
            reporter.log(f"zero-initialised the last BN of {zero_init_residual(model)} residual branches")
        model.train()
        return model
    model = resolve_model(cfg.model, cfg.weights, **options).model
    reporter.log(f"loaded {cfg.weights} ({model.config.family}, width {model.config.width:g})")
    if model.config.num_classes != num_classes:
        reporter.log(f"classifier re-initialised for {num_classes} classes (the checkpoint had "
                     f"{model.config.num_classes}); all other layers loaded")
        model.reset_classifier(num_classes)
    model.config = model.config.replace(resolution=resolution)
    model.train()
    return model
