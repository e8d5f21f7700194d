"""How an image becomes the network's input. A ``Preprocessing`` record travels with checkpoints
and exports so that prediction, evaluation and serving use exactly what training used;
``default_preprocessing`` is the one answer for a model that carries none.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
INCEPTION_MEAN = (0.5, 0.5, 0.5)   # TF-trained weights: [-1, 1]
INCEPTION_STD = (0.5, 0.5, 0.5)
# (mean, std) of each data set's training images, by the names data specs and --normalize use
STATS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
         "cifar100": (CIFAR100_MEAN, CIFAR100_STD)}


@dataclass(frozen=True)
class Preprocessing:
    """``kind`` "imagenet" (resize to resolution/crop_pct, center crop) or "cifar" (resize to
    resolution, no crop), then normalise with mean/std."""
    kind: str = "imagenet"
    resolution: int = 224
    crop_pct: float = 0.875
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def to_dict(self) -> dict:
        return asdict(self)

    def at(self, resolution: int) -> Preprocessing:
        return replace(self, resolution=int(resolution))

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        d = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for key in ("mean", "std"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)


def imagenet(resolution: int = 224) -> Preprocessing:
    return Preprocessing("imagenet", resolution)


def cifar(resolution: int = 32, mean=CIFAR10_MEAN, std=CIFAR10_STD) -> Preprocessing:
    return Preprocessing("cifar", resolution, 1.0, tuple(mean), tuple(std))


def inception(resolution: int = 224) -> Preprocessing:
    """TF-trained weights (Keras applications): inputs scaled to [-1, 1]."""
    return Preprocessing("imagenet", resolution, 0.875, INCEPTION_MEAN, INCEPTION_STD)


def default_preprocessing(resolution: int = 224, *, cifar_stem: int | bool = 0,
                          source_format: str | None = None) -> Preprocessing:
    """The preprocessing of a model that carries none: CIFAR's for a CIFAR stem, Inception's for
    Keras weights, else ImageNet's, at ``resolution``. Every layer asks this one function."""
    if cifar_stem:
        return cifar(resolution)
    if source_format == "keras":
        return inception(resolution)
    return imagenet(resolution)


def preprocessing_of(model, resolution: int | None = None) -> Preprocessing:
    """What ``model`` (a MobileNet, possibly loaded from a checkpoint) should be fed: its
    ``checkpoint_meta.preprocessing``, else its config's default; at ``resolution`` if given."""
    meta = getattr(model, "checkpoint_meta", None)
    pre = getattr(meta, "preprocessing", None)
    config = getattr(model, "config", None)
    if pre is None:
        pre = default_preprocessing(getattr(config, "resolution", 224), cifar_stem=getattr(config, "cifar_stem", 0))
    return pre.at(resolution) if resolution is not None and resolution != pre.resolution else pre
