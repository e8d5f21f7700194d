"""Paper tables, one per family, one row per line of the paper's table.

Columns carry the papers' names: ``out`` (c / #out), ``stride`` (s), ``repeat`` (n),
``t`` (expansion ratio, V2 and MobileNeXt), ``exp`` (expansion size in channels, V3),
``kernel``, ``se``, ``act`` (NL). Channels are at width multiplier 1.0; ``network.py``
scales them. Nothing here is code: to audit a family, read its table against the paper.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    block: str                # "ds" depthwise separable, "ir" inverted residual, "sg" sandglass
    out: int
    stride: int = 1
    repeat: int = 1
    kernel: int = 3
    t: float | None = None    # expansion ratio
    exp: int | None = None    # expansion size (channels at width 1.0)
    se: bool = False
    act: str = "relu6"
    keep_for_thin: bool = False  # channels never shrink below the table value when width < 1


@dataclass(frozen=True)
class FamilySpec:
    name: str
    paper: str
    rows: tuple[Row, ...]
    stem: int = 32                  # 3x3 stride-2 stem conv
    stem_act: str = "relu6"
    stem_scaled: bool = True        # False: the stem keeps its channels at every width
    head: int | None = None         # final 1x1 conv before pooling (channels at width 1.0) ...
    head_ratio: float | None = None  # ... or as a multiple of the last block's channels
    head_keep_for_thin: bool = False
    head_act: str = "relu6"
    pre_logits: int | None = None   # V3: a 1x1 conv (here Linear) with bias after pooling
    pre_logits_act: str = "hswish"
    rounding: str = "divisible"     # "divisible": make_divisible(c*w, 8); "floor": max(int(c*w), 8)
    # Backbones: whether the head conv is the last feature map (V3's 1x1 conv is a stage of its
    # own in timm and torchvision, its "cn" block); else the last block is (V2's 1280 conv is timm's
    # ``conv_head``, outside ``features_only``).
    head_in_features: bool = False
    bn_eps: float = 1e-5
    dropout: float = 0.2


# MobileNetV1, Table 1 of arXiv:1704.04861 (the last dw row is stride 1 in the official code;
# the paper's "s2" there is a typo: the table's own output size stays 7x7).
MOBILENET_V1 = FamilySpec(
    name="mobilenet_v1", paper="arXiv:1704.04861 Table 1",
    rows=(
        Row("ds", 64, 1),
        Row("ds", 128, 2),
        Row("ds", 128, 1),
        Row("ds", 256, 2),
        Row("ds", 256, 1),
        Row("ds", 512, 2),
        Row("ds", 512, 1, repeat=5),
        Row("ds", 1024, 2),
        Row("ds", 1024, 1),
    ),
    stem=32, rounding="floor", bn_eps=1e-3, dropout=1e-3,
)

# MobileNetV2, Table 2 of arXiv:1801.04381: t, c, n, s.
MOBILENET_V2 = FamilySpec(
    name="mobilenet_v2", paper="arXiv:1801.04381 Table 2",
    rows=(
        Row("ir", 16, 1, repeat=1, t=1),
        Row("ir", 24, 2, repeat=2, t=6),
        Row("ir", 32, 2, repeat=3, t=6),
        Row("ir", 64, 2, repeat=4, t=6),
        Row("ir", 96, 1, repeat=3, t=6),
        Row("ir", 160, 2, repeat=3, t=6),
        Row("ir", 320, 1, repeat=1, t=6),
    ),
    stem=32, head=1280, head_keep_for_thin=True,
)


def _v3_large(minimal: bool) -> tuple[Row, ...]:
    """MobileNetV3-Large, Table 1 of arXiv:1905.02244: kernel, exp size, #out, SE, NL, s."""
    re, hs = "relu", ("relu" if minimal else "hswish")
    se = not minimal
    k5 = 3 if minimal else 5
    return (
        Row("ir", 16, 1, kernel=3, exp=16, act=re),
        Row("ir", 24, 2, kernel=3, exp=64, act=re),
        Row("ir", 24, 1, kernel=3, exp=72, act=re),
        Row("ir", 40, 2, kernel=k5, exp=72, se=se, act=re),
        Row("ir", 40, 1, kernel=k5, exp=120, se=se, act=re),
        Row("ir", 40, 1, kernel=k5, exp=120, se=se, act=re),
        Row("ir", 80, 2, kernel=3, exp=240, act=hs),
        Row("ir", 80, 1, kernel=3, exp=200, act=hs),
        Row("ir", 80, 1, kernel=3, exp=184, act=hs),
        Row("ir", 80, 1, kernel=3, exp=184, act=hs),
        Row("ir", 112, 1, kernel=3, exp=480, se=se, act=hs),
        Row("ir", 112, 1, kernel=3, exp=672, se=se, act=hs),
        Row("ir", 160, 2, kernel=k5, exp=672, se=se, act=hs),
        Row("ir", 160, 1, kernel=k5, exp=960, se=se, act=hs),
        Row("ir", 160, 1, kernel=k5, exp=960, se=se, act=hs),
    )


def _v3_small(minimal: bool) -> tuple[Row, ...]:
    """MobileNetV3-Small, Table 2 of arXiv:1905.02244 (no SE on the last conv, as in the TF code)."""
    re, hs = "relu", ("relu" if minimal else "hswish")
    se = not minimal
    k5 = 3 if minimal else 5
    return (
        Row("ir", 16, 2, kernel=3, exp=16, se=se, act=re),
        Row("ir", 24, 2, kernel=3, exp=72, act=re),
        Row("ir", 24, 1, kernel=3, exp=88, act=re),
        Row("ir", 40, 2, kernel=k5, exp=96, se=se, act=hs),
        Row("ir", 40, 1, kernel=k5, exp=240, se=se, act=hs),
        Row("ir", 40, 1, kernel=k5, exp=240, se=se, act=hs),
        Row("ir", 48, 1, kernel=k5, exp=120, se=se, act=hs),
        Row("ir", 48, 1, kernel=k5, exp=144, se=se, act=hs),
        Row("ir", 96, 2, kernel=k5, exp=288, se=se, act=hs),
        Row("ir", 96, 1, kernel=k5, exp=576, se=se, act=hs),
        Row("ir", 96, 1, kernel=k5, exp=576, se=se, act=hs),
    )


def _v3(name: str, rows: tuple[Row, ...], pre_logits: int, minimal: bool) -> FamilySpec:
    act = "relu" if minimal else "hswish"
    return FamilySpec(
        name=name, paper="arXiv:1905.02244 Tables 1-2" + (" (minimalistic, TF-slim)" if minimal else ""),
        rows=rows, stem=16, stem_act=act, stem_scaled=False,
        head_ratio=6, head_act=act, pre_logits=pre_logits, pre_logits_act=act,
        head_keep_for_thin=False, bn_eps=1e-3, dropout=0.2, head_in_features=True,
    )


MOBILENET_V3_LARGE = _v3("mobilenet_v3_large", _v3_large(False), 1280, False)
MOBILENET_V3_SMALL = _v3("mobilenet_v3_small", _v3_small(False), 1024, False)
MOBILENET_V3_LARGE_MINIMAL = _v3("mobilenet_v3_large_minimal", _v3_large(True), 1280, True)
MOBILENET_V3_SMALL_MINIMAL = _v3("mobilenet_v3_small_minimal", _v3_small(True), 1024, True)

# MobileNeXt, Table 3 of arXiv:2007.02269 as built by the official code: t, c, n, s.
MOBILENEXT = FamilySpec(
    name="mobilenext", paper="arXiv:2007.02269 (official code, rethinking_bottleneck_design)",
    rows=(
        Row("sg", 96, 2, repeat=1, t=2),
        Row("sg", 144, 1, repeat=1, t=6),
        Row("sg", 192, 2, repeat=3, t=6),
        Row("sg", 288, 2, repeat=3, t=6),
        Row("sg", 384, 1, repeat=4, t=6),
        Row("sg", 576, 2, repeat=4, t=6),
        Row("sg", 960, 1, repeat=3, t=6),
        Row("sg", 1280, 1, repeat=1, t=6, keep_for_thin=True),
    ),
    stem=32,
)

FAMILIES: dict[str, FamilySpec] = {s.name: s for s in (
    MOBILENET_V1, MOBILENET_V2, MOBILENET_V3_LARGE, MOBILENET_V3_SMALL,
    MOBILENET_V3_LARGE_MINIMAL, MOBILENET_V3_SMALL_MINIMAL, MOBILENEXT,
)}
