"""The weight registry as data: every public checkpoint our variants can load.

Each entry is a public fact copied from the code that publishes it:
torchvision ``models/mobilenetv2.py``/``mobilenetv3.py`` (URLs, acc@1, transforms),
timm ``models/efficientnet.py``/``mobilenetv3.py`` (URLs, pretrained cfgs) with top-1 from
timm's ``results/results-imagenet.csv``, and Keras ``src/applications/mobilenet*.py``
(URLs, md5 of the V3 files) with top-1 from the TF-slim/Keras tables.

Hashes, honestly: each entry carries the strongest digest its publisher gives, and ``hash_kind``
says which one a download is checked against (``hub.hash_kind``):
- ``sha256-prefix``: torchvision and timm's GitHub release files follow the torch.hub convention
  ``name-<sha256[:8]>.pth`` (timm's ``clean_checkpoint.py`` writes the same suffix); that prefix
  is all they publish, and it is checked as ``torch.hub.check_hash`` checks it. Eight hex digits
  catch a damaged or wrong file, not a forged one.
- ``md5``: Keras publishes the md5 of its MobileNetV3 files (``WEIGHTS_HASHES``).
- ``none``: Keras publishes no hash for its MobileNet V1/V2 files, and timm's code none for its
  Hugging Face-only file (``mobilenetv1_100.ra4_e3600_r224_in1k``; the Hub's LFS sha256 is not
  recorded here because it could not be checked when this table was written). These are
  downloaded unverified.
- ``sha256`` (a full digest) is checked whenever an entry gives one.

``tf`` marks timm's ports of TF checkpoints (``tf_*``): the converter then builds our model
with TF "same" padding and BatchNorm eps 1e-3 (``convert.source_options`` has the rules).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, replace

from ..core.errors import UsageError
from ..core.preprocessing import IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN, INCEPTION_STD, Preprocessing
from ..models.registry import VARIANTS, model_config
from .hub import hash_kind

FORMATS = ("torchvision", "timm", "keras")


@dataclass(frozen=True)
class WeightSource:
    family: str
    width: float
    tag: str                       # "<format>.<name>", what ``pretrained="..."`` selects
    format: str                    # "torchvision" (.pth), "timm" (.pth/.safetensors), "keras" (.h5)
    url: str
    filename: str
    sha256: str | None = None      # full digest, or the public prefix (>= 8 hex), or None
    md5: str | None = None
    num_classes: int = 1000        # TF-slim checkpoints would say 1001 (background first)
    preprocessing: Preprocessing = Preprocessing()
    top1: float | None = None      # published ImageNet top-1 (%)
    resolution: int = 224          # the resolution the weights were trained and evaluated at
    reference: str = ""            # the reference implementation's name for the model
    tf: bool = False               # a timm ``tf_*`` port of TF weights

    @property
    def hash_kind(self) -> str:
        """What a download of this file is verified against: "sha256", "sha256-prefix", "md5" or "none"."""
        return hash_kind(self.sha256, self.md5)


def _pre(crop_pct=0.875, mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bilinear", resolution=224):
    return Preprocessing("imagenet", resolution, crop_pct, tuple(mean), tuple(std), interpolation)


TV_V1 = _pre()                                  # ImageClassification(crop_size=224): resize 256
TV_V2 = _pre(crop_pct=224 / 232)                # ImageClassification(crop_size=224, resize_size=232)
TIMM = _pre(interpolation="bicubic")
TIMM_TF = _pre(mean=INCEPTION_MEAN, std=INCEPTION_STD)
TIMM_RA4 = _pre(mean=INCEPTION_MEAN, std=INCEPTION_STD, interpolation="bicubic")
TIMM_MIIL = _pre(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def _keras_pre(resolution: int) -> Preprocessing:
    """Keras/TF-slim: inputs in [-1, 1] (``preprocess_input`` mode "tf"), central crop 0.875."""
    return _pre(mean=INCEPTION_MEAN, std=INCEPTION_STD, resolution=resolution)


def _torchvision() -> list[WeightSource]:
    base = "https://download.pytorch.org/models/"
    rows = [  # family, tag, file, sha256 prefix from the file name, acc@1, transforms
        ("mobilenet_v2", "IMAGENET1K_V2", "mobilenet_v2-7ebf99e0.pth", 72.154, TV_V2),
        ("mobilenet_v2", "IMAGENET1K_V1", "mobilenet_v2-b0353104.pth", 71.878, TV_V1),
        ("mobilenet_v3_large", "IMAGENET1K_V2", "mobilenet_v3_large-5c1a4163.pth", 75.274, TV_V2),
        ("mobilenet_v3_large", "IMAGENET1K_V1", "mobilenet_v3_large-8738ca79.pth", 74.042, TV_V1),
        ("mobilenet_v3_small", "IMAGENET1K_V1", "mobilenet_v3_small-047dcff4.pth", 67.668, TV_V1),
    ]
    return [WeightSource(family, 1.0, f"torchvision.{tag}", "torchvision", base + file, file,
                         sha256=file.rsplit("-", 1)[1].split(".")[0], preprocessing=pre, top1=top1,
                         reference=family)
            for family, tag, file, top1, pre in rows]


def _timm() -> list[WeightSource]:
    gh = "https://github.com/rwightman/pytorch-image-models/releases/download/"
    rows = [  # family, width, timm name, release path (None: Hugging Face only), top-1, preprocessing
        ("mobilenet_v1", 1.0, "mobilenetv1_100.ra4_e3600_r224_in1k", None, None, TIMM_RA4),
        ("mobilenet_v2", 0.5, "mobilenetv2_050.lamb_in1k", "v0.1-weights/mobilenetv2_050-3d30d450.pth", 65.950, TIMM),
        ("mobilenet_v2", 1.0, "mobilenetv2_100.ra_in1k", "v0.1-weights/mobilenetv2_100_ra-b33bc2c4.pth", 72.976, TIMM),
        ("mobilenet_v2", 1.4, "mobilenetv2_140.ra_in1k", "v0.1-weights/mobilenetv2_140_ra-21a4e913.pth", 76.520, TIMM),
        ("mobilenet_v3_large", 1.0, "mobilenetv3_large_100.ra_in1k",
         "v0.1-weights/mobilenetv3_large_100_ra-f55367f5.pth", 75.766, TIMM),
        ("mobilenet_v3_large", 1.0, "mobilenetv3_large_100.miil_in21k_ft_in1k",
         "v0.1-tresnet/mobilenetv3_large_100_1k_miil_78_0-66471c13.pth", 77.918, TIMM_MIIL),
        ("mobilenet_v3_small", 0.5, "mobilenetv3_small_050.lamb_in1k",
         "v0.1-weights/mobilenetv3_small_050_lambc-4b7bbe87.pth", 57.910, TIMM),
        ("mobilenet_v3_small", 0.75, "mobilenetv3_small_075.lamb_in1k",
         "v0.1-weights/mobilenetv3_small_075_lambc-384766db.pth", 65.234, TIMM),
        ("mobilenet_v3_small", 1.0, "mobilenetv3_small_100.lamb_in1k",
         "v0.1-weights/mobilenetv3_small_100_lamb-266a294c.pth", 67.656, TIMM),
        # Ports of the official TF weights.
        ("mobilenet_v3_large", 0.75, "tf_mobilenetv3_large_075.in1k",
         "v0.1-weights/tf_mobilenetv3_large_075-150ee8b0.pth", 73.432, TIMM_TF),
        ("mobilenet_v3_large", 1.0, "tf_mobilenetv3_large_100.in1k",
         "v0.1-weights/tf_mobilenetv3_large_100-427764d5.pth", 75.516, TIMM_TF),
        ("mobilenet_v3_large_minimal", 1.0, "tf_mobilenetv3_large_minimal_100.in1k",
         "v0.1-weights/tf_mobilenetv3_large_minimal_100-8596ae28.pth", 72.258, TIMM_TF),
        ("mobilenet_v3_small", 0.75, "tf_mobilenetv3_small_075.in1k",
         "v0.1-weights/tf_mobilenetv3_small_075-da427f52.pth", 65.728, TIMM_TF),
        ("mobilenet_v3_small", 1.0, "tf_mobilenetv3_small_100.in1k",
         "v0.1-weights/tf_mobilenetv3_small_100-37f49e2b.pth", 67.918, TIMM_TF),
        ("mobilenet_v3_small_minimal", 1.0, "tf_mobilenetv3_small_minimal_100.in1k",
         "v0.1-weights/tf_mobilenetv3_small_minimal_100-922a7843.pth", 62.890, TIMM_TF),
    ]
    # Not listed: mobilenetv2_110d/120d ("deep" variants) and mobilenetv3_rw are not in our zoo.
    out = []
    for family, width, name, path, top1, pre in rows:
        model, tag = name.split(".", 1)
        prefix = "tf_" if model.startswith("tf_") else ""
        if path:
            url, filename = gh + path, path.rsplit("/", 1)[1]
            sha = filename.rsplit("-", 1)[1].split(".")[0]
        else:
            url = f"https://huggingface.co/timm/{name}/resolve/main/model.safetensors"
            filename, sha = f"{name}.safetensors", None
        out.append(WeightSource(family, width, f"timm.{prefix}{tag}", "timm", url, filename, sha256=sha,
                                preprocessing=pre, top1=top1, reference=name, tf=bool(prefix)))
    return out


def _timm_v4() -> list[WeightSource]:
    """timm's MobileNetV4 ImageNet-1k checkpoints (Hugging Face only, no published hash): the
    pretrained cfgs of ``timm/models/mobilenetv3.py``, the paper's resolution first for each model.
    Their top-1 is in timm's results tables, which are not in its wheel: not recorded here."""
    rows = [  # family, width, timm name, resolution, crop_pct, Inception mean/std
        ("mobilenet_v4_conv_small", 1.0, "mobilenetv4_conv_small.e2400_r224_in1k", 224, 0.875, False),
        ("mobilenet_v4_conv_small", 1.0, "mobilenetv4_conv_small.e1200_r224_in1k", 224, 0.875, False),
        ("mobilenet_v4_conv_small", 1.0, "mobilenetv4_conv_small.e3600_r256_in1k", 256, 0.95, True),
        ("mobilenet_v4_conv_small", 0.5, "mobilenetv4_conv_small_050.e3000_r224_in1k", 224, 0.875, True),
        ("mobilenet_v4_conv_medium", 1.0, "mobilenetv4_conv_medium.e500_r256_in1k", 256, 0.95, False),
        ("mobilenet_v4_conv_medium", 1.0, "mobilenetv4_conv_medium.e500_r224_in1k", 224, 0.95, False),
        ("mobilenet_v4_conv_medium", 1.0, "mobilenetv4_conv_medium.e250_r384_in12k_ft_in1k", 384, 0.95, False),
        ("mobilenet_v4_conv_large", 1.0, "mobilenetv4_conv_large.e600_r384_in1k", 384, 0.95, False),
        ("mobilenet_v4_conv_large", 1.0, "mobilenetv4_conv_large.e500_r256_in1k", 256, 0.95, False),
        ("mobilenet_v4_hybrid_medium", 1.0, "mobilenetv4_hybrid_medium.ix_e550_r256_in1k", 256, 0.95, False),
        ("mobilenet_v4_hybrid_medium", 1.0, "mobilenetv4_hybrid_medium.e200_r256_in12k_ft_in1k", 256, 0.95, False),
        ("mobilenet_v4_hybrid_medium", 1.0, "mobilenetv4_hybrid_medium.ix_e550_r384_in1k", 384, 0.95, False),
        ("mobilenet_v4_hybrid_medium", 1.0, "mobilenetv4_hybrid_medium.e500_r224_in1k", 224, 0.95, False),
        ("mobilenet_v4_hybrid_large", 1.0, "mobilenetv4_hybrid_large.e600_r384_in1k", 384, 0.95, False),
        ("mobilenet_v4_hybrid_large", 1.0, "mobilenetv4_hybrid_large.ix_e600_r384_in1k", 384, 0.95, False),
    ]
    out = []
    for family, width, name, res, crop, inception in rows:
        mean, std = (INCEPTION_MEAN, INCEPTION_STD) if inception else (IMAGENET_MEAN, IMAGENET_STD)
        out.append(WeightSource(family, width, f"timm.{name.split('.', 1)[1]}", "timm",
                                f"https://huggingface.co/timm/{name}/resolve/main/model.safetensors",
                                f"{name}.safetensors", preprocessing=_pre(crop, mean, std, "bicubic", res),
                                resolution=res, reference=name))
    return out


_KERAS_V3_MD5 = {  # keras/src/applications/mobilenet_v3.py WEIGHTS_HASHES (with top)
    ("large", "", 0.75): "765b44a33ad4005b3ac83185abf1d0eb",
    ("large", "", 1.0): "59e551e166be033d707958cf9e29a6a7",
    ("large", "_minimalistic", 1.0): "675e7b876c45c57e9e63e6d90a36599c",
    ("small", "", 0.75): "cb65d4e5be93758266aa0a7f2c6708b7",
    ("small", "", 1.0): "8768d4c2e7dee89b9d02b2d03d65d862",
    ("small", "_minimalistic", 1.0): "99cd97fb2fcdad2bf028eb838de69e37",
}
_KERAS_V3_TOP1 = {("large", "", 0.75): 73.3, ("large", "", 1.0): 75.6, ("large", "_minimalistic", 1.0): 72.3,
                  ("small", "", 0.75): 65.4, ("small", "", 1.0): 68.1, ("small", "_minimalistic", 1.0): 61.9}


def _keras() -> list[WeightSource]:
    base = "https://storage.googleapis.com/tensorflow/keras-applications/"
    out = []
    v1_alpha = {1.0: "1_0", 0.75: "7_5", 0.5: "5_0", 0.25: "2_5"}
    for v in VARIANTS.values():
        if v.name == v.family or v.family not in ("mobilenet_v1", "mobilenet_v2"):
            continue
        if v.family == "mobilenet_v1":
            file, ref = f"mobilenet_{v1_alpha[v.width]}_{v.resolution}_tf.h5", "MobileNet"
            url = base + "mobilenet/" + file
        else:
            file = f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(v.width)}_{v.resolution}.h5"
            ref, url = "MobileNetV2", base + "mobilenet_v2/" + file
        out.append(WeightSource(v.family, v.width, "keras.imagenet", "keras", url, file,
                                preprocessing=_keras_pre(v.resolution), top1=v.top1,
                                resolution=v.resolution, reference=ref))
    for (size, minimal, alpha), md5 in _KERAS_V3_MD5.items():
        file = f"weights_mobilenet_v3_{size}{minimal}_224_{alpha}_float.h5"
        family = f"mobilenet_v3_{size}" + ("_minimal" if minimal else "")
        out.append(WeightSource(family, alpha, "keras.imagenet", "keras", base + "mobilenet_v3/" + file, file,
                                md5=md5, preprocessing=_keras_pre(224), top1=_KERAS_V3_TOP1[(size, minimal, alpha)],
                                reference=f"MobileNetV3{size.title()}"))
    return out


# Per (family, width), the first source is the default of ``pretrained=True``: torchvision
# first (no extra dependency, newest recipe first), then timm, then Keras (needs keras + h5py).
SOURCES: tuple[WeightSource, ...] = tuple(_torchvision() + _timm() + _timm_v4() + _keras())


def sources_for(name: str, width: float | None = None) -> list[WeightSource]:
    """Every known checkpoint for a variant, those at the variant's resolution first."""
    cfg = model_config(name, width)
    found = [s for s in SOURCES if s.family == cfg.family and abs(s.width - cfg.width) < 1e-9]
    return sorted(found, key=lambda s: s.resolution != cfg.resolution)


def find_source(name: str, pretrained: bool | str = True, width: float | None = None) -> WeightSource:
    """The checkpoint ``pretrained`` selects: True (the default), a tag ("timm.tf_in1k") or a
    format ("keras": its first checkpoint for this variant)."""
    found = sources_for(name, width)
    label = name if width is None else f"{name} width {width}"
    if not found:
        raise UsageError(f"no published weights for {label}; see `mobilenets list` for variants with weights")
    if pretrained is True:
        return found[0]
    key = str(pretrained)
    for s in found:
        if key in (s.tag, s.format):
            return s
    tags = sorted({s.tag for s in found})
    close = difflib.get_close_matches(key, tags, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]}? " if close else ""
    raise UsageError(f"unknown weights {key!r} for {label}; {hint}known: {', '.join(tags)}")


def with_resolution(source: WeightSource, resolution: int) -> Preprocessing:
    """The source's preprocessing at another input size (same crop ratio, mean, std)."""
    return replace(source.preprocessing, resolution=resolution)
