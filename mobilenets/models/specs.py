"""Paper tables, one per family, one row per line of the paper's table.

Columns carry the papers' names: ``out`` (c / #out), ``stride`` (s), ``repeat`` (n),
``t`` (expansion ratio, V2 and MobileNeXt), ``exp`` (expansion size in channels, V3),
``kernel``, ``se``, ``act`` (NL); MobileNetV4 adds ``start`` (the UIB's optional depthwise kernel
before the expansion; ``kernel`` is its middle one, 0 for none), ``heads``, ``key_dim`` and
``kv_stride`` (Mobile MQA). Channels are at width multiplier 1.0; ``network.py``
scales them. Nothing here is code: to audit a family, read its table against the paper.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial


@dataclass(frozen=True)
class Row:
    block: str                # "ds" depthwise separable, "ir" inverted residual, "sg" sandglass,
                              # "conv" conv-BN-act, "fused" fused IB, "uib" universal IB, "mqa" Mobile MQA
    out: int
    stride: int = 1
    repeat: int = 1
    kernel: int = 3
    t: float | None = None    # expansion ratio
    exp: int | None = None    # expansion size (channels at width 1.0)
    se: bool = False
    act: str = "relu6"
    keep_for_thin: bool = False  # channels never shrink below the table value when width < 1
    start: int = 0            # UIB: kernel of the depthwise before the expansion (0: none)
    heads: int | None = None  # Mobile MQA: query heads ...
    key_dim: int | None = None  # ... key (= value) dimension, shared by all heads ...
    kv_stride: int = 1        # ... and the stride of the keys' and values' depthwise downsampling


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
    pre_logits_norm: bool = False   # V4: the pre-logits layer has no bias and a BatchNorm before its activation
    layer_scale: float | None = None  # V4 hybrids: a learned per-channel scale (this init) on UIB/MQA branches
    rounding: str = "divisible"     # "divisible": make_divisible(c*w, 8); "floor": max(int(c*w), 8)
    # Backbones: whether the head conv is the last feature map (V3's 1x1 conv is a stage of its
    # own in timm and torchvision, its "cn" block); else the last block is (V2's 1280 conv is timm's
    # ``conv_head``, outside ``features_only``).
    head_in_features: bool = False
    bn_eps: float = 1e-5
    dropout: float = 0.2
    series: str | None = None       # the generation a chart groups it under (None: its own name)


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

# MobileNetV4 (arXiv:2404.10518) as its official code builds it: the block specs of
# tensorflow/models official/vision/modeling/backbones/mobilenet.py, where the paper's footnote 1
# points for every model (timm's mobilenetv3.py ``_gen_mobilenet_v4`` copies them block for block;
# M and L count 5-8% above the paper's table, see tests/test_mobilenetv4.py). Columns: block, c, s,
# UIB's start and middle depthwise kernels (``start``/``kernel``; 0: none), expansion ``t`` (the
# tables' "expanded dim" is t x input channels), Mobile MQA's heads, key dim and kv stride. UIB:
# ExtraDW has both depthwise convs, IB only the middle one, ConvNext only the start one, FFN neither.
# Every model ends in a 1x1 conv to 960 channels, global pooling and a 1x1 conv (no bias) + BN + act
# to 1280 channels.
def _mnv4_conv_small() -> tuple[Row, ...]:
    """MNv4-Conv-S. The table's two FusedIB stages are conv-BN-ReLU pairs in the official code."""
    conv, uib = partial(Row, "conv", act="relu"), partial(Row, "uib", act="relu")
    return (
        conv(32, 2, kernel=3), conv(32, 1, kernel=1),
        conv(96, 2, kernel=3), conv(64, 1, kernel=1),
        uib(96, 2, start=5, kernel=5, t=3),                 # ExtraDW
        uib(96, 1, start=0, kernel=3, t=2, repeat=4),       # IB
        uib(96, 1, start=3, kernel=0, t=4),                 # ConvNext
        uib(128, 2, start=3, kernel=3, t=6),                # ExtraDW
        uib(128, 1, start=5, kernel=5, t=4),                # ExtraDW
        uib(128, 1, start=0, kernel=5, t=4),                # IB
        uib(128, 1, start=0, kernel=5, t=3),                # IB
        uib(128, 1, start=0, kernel=3, t=4, repeat=2),      # IB
    )


def _mnv4_conv_medium() -> tuple[Row, ...]:
    """MNv4-Conv-M."""
    uib = partial(Row, "uib", act="relu")
    return (
        Row("fused", 48, 2, kernel=3, t=4, act="relu"),     # FusedIB
        uib(80, 2, start=3, kernel=5, t=4),                 # ExtraDW
        uib(80, 1, start=3, kernel=3, t=2),                 # ExtraDW
        uib(160, 2, start=3, kernel=5, t=6),                # ExtraDW
        uib(160, 1, start=3, kernel=3, t=4, repeat=2),      # ExtraDW
        uib(160, 1, start=3, kernel=5, t=4),                # ExtraDW
        uib(160, 1, start=3, kernel=3, t=4),                # ExtraDW
        uib(160, 1, start=3, kernel=0, t=4),                # ConvNext
        uib(160, 1, start=0, kernel=0, t=2),                # FFN
        uib(160, 1, start=3, kernel=0, t=4),                # ConvNext
        uib(256, 2, start=5, kernel=5, t=6),                # ExtraDW
        uib(256, 1, start=5, kernel=5, t=4),                # ExtraDW
        uib(256, 1, start=3, kernel=5, t=4, repeat=2),      # ExtraDW
        uib(256, 1, start=0, kernel=0, t=4),                # FFN
        uib(256, 1, start=3, kernel=0, t=4),                # ConvNext
        uib(256, 1, start=3, kernel=5, t=2),                # ExtraDW
        uib(256, 1, start=5, kernel=5, t=4),                # ExtraDW
        uib(256, 1, start=0, kernel=0, t=4, repeat=2),      # FFN
        uib(256, 1, start=5, kernel=0, t=2),                # ConvNext
    )


def _mnv4_conv_large() -> tuple[Row, ...]:
    """MNv4-Conv-L."""
    uib = partial(Row, "uib", act="relu")
    return (
        Row("fused", 48, 2, kernel=3, t=4, act="relu"),     # FusedIB
        uib(96, 2, start=3, kernel=5, t=4),                 # ExtraDW
        uib(96, 1, start=3, kernel=3, t=4),                 # ExtraDW
        uib(192, 2, start=3, kernel=5, t=4),                # ExtraDW
        uib(192, 1, start=3, kernel=3, t=4, repeat=3),      # ExtraDW
        uib(192, 1, start=3, kernel=5, t=4),                # ExtraDW
        uib(192, 1, start=5, kernel=3, t=4, repeat=5),      # ExtraDW
        uib(192, 1, start=3, kernel=0, t=4),                # ConvNext
        uib(512, 2, start=5, kernel=5, t=4, repeat=4),      # ExtraDW (the first one strides)
        uib(512, 1, start=5, kernel=0, t=4),                # ConvNext
        uib(512, 1, start=5, kernel=3, t=4),                # ExtraDW
        uib(512, 1, start=5, kernel=0, t=4, repeat=2),      # ConvNext
        uib(512, 1, start=5, kernel=3, t=4),                # ExtraDW
        uib(512, 1, start=5, kernel=5, t=4),                # ExtraDW
        uib(512, 1, start=5, kernel=0, t=4, repeat=3),      # ConvNext
    )


def _mnv4_hybrid_medium() -> tuple[Row, ...]:
    """MNv4-Hybrid-M: Conv-M's layout with Mobile MQA (4 heads, key dim 64) in the last two stages,
    keys and values downsampled 2x at stride 16."""
    uib = partial(Row, "uib", act="relu")
    mqa = partial(Row, "mqa", kernel=3, heads=4, key_dim=64, act="relu")
    return (
        Row("fused", 48, 2, kernel=3, t=4, act="relu"),     # FusedIB
        uib(80, 2, start=3, kernel=5, t=4),                 # ExtraDW
        uib(80, 1, start=3, kernel=3, t=2),                 # ExtraDW
        uib(160, 2, start=3, kernel=5, t=6),                # ExtraDW
        uib(160, 1, start=0, kernel=0, t=2),                # FFN
        uib(160, 1, start=3, kernel=3, t=4),                # ExtraDW
        uib(160, 1, start=3, kernel=5, t=4),                # ExtraDW
        mqa(160, 1, kv_stride=2),
        uib(160, 1, start=3, kernel=3, t=4),                # ExtraDW
        mqa(160, 1, kv_stride=2),
        uib(160, 1, start=3, kernel=0, t=4),                # ConvNext
        mqa(160, 1, kv_stride=2),
        uib(160, 1, start=3, kernel=3, t=4),                # ExtraDW
        mqa(160, 1, kv_stride=2),
        uib(160, 1, start=3, kernel=0, t=4),                # ConvNext
        uib(256, 2, start=5, kernel=5, t=6),                # ExtraDW
        uib(256, 1, start=5, kernel=5, t=4),                # ExtraDW
        uib(256, 1, start=3, kernel=5, t=4, repeat=2),      # ExtraDW
        uib(256, 1, start=0, kernel=0, t=2),                # FFN
        uib(256, 1, start=3, kernel=5, t=2),                # ExtraDW
        uib(256, 1, start=0, kernel=0, t=2),                # FFN
        uib(256, 1, start=0, kernel=0, t=4),                # FFN
        mqa(256, 1),
        uib(256, 1, start=3, kernel=0, t=4),                # ConvNext
        mqa(256, 1),
        uib(256, 1, start=5, kernel=5, t=4),                # ExtraDW
        mqa(256, 1),
        uib(256, 1, start=5, kernel=0, t=4),                # ConvNext
        mqa(256, 1),
        uib(256, 1, start=5, kernel=0, t=4),                # ConvNext
    )


def _mnv4_hybrid_large() -> tuple[Row, ...]:
    """MNv4-Hybrid-L: Conv-L's layout with Mobile MQA (8 heads; key dim 48 with keys and values
    downsampled 2x at stride 16, 64 at stride 32), GELU throughout."""
    uib = partial(Row, "uib", act="gelu")
    mqa16 = partial(Row, "mqa", 192, 1, kernel=3, heads=8, key_dim=48, kv_stride=2, act="gelu")
    mqa32 = partial(Row, "mqa", 512, 1, kernel=3, heads=8, key_dim=64, act="gelu")
    return (
        Row("fused", 48, 2, kernel=3, t=4, act="gelu"),     # FusedIB
        uib(96, 2, start=3, kernel=5, t=4),                 # ExtraDW
        uib(96, 1, start=3, kernel=3, t=4),                 # ExtraDW
        uib(192, 2, start=3, kernel=5, t=4),                # ExtraDW
        uib(192, 1, start=3, kernel=3, t=4, repeat=3),      # ExtraDW
        uib(192, 1, start=3, kernel=5, t=4),                # ExtraDW
        uib(192, 1, start=5, kernel=3, t=4, repeat=2),      # ExtraDW
        mqa16(),
        uib(192, 1, start=5, kernel=3, t=4),                # ExtraDW
        mqa16(),
        uib(192, 1, start=5, kernel=3, t=4),                # ExtraDW
        mqa16(),
        uib(192, 1, start=5, kernel=3, t=4),                # ExtraDW
        mqa16(),
        uib(192, 1, start=3, kernel=0, t=4),                # ConvNext
        uib(512, 2, start=5, kernel=5, t=4, repeat=4),      # ExtraDW (the first one strides)
        uib(512, 1, start=5, kernel=0, t=4),                # ConvNext
        uib(512, 1, start=5, kernel=3, t=4),                # ExtraDW
        uib(512, 1, start=5, kernel=0, t=4, repeat=2),      # ConvNext
        uib(512, 1, start=5, kernel=3, t=4),                # ExtraDW
        uib(512, 1, start=5, kernel=5, t=4),                # ExtraDW
        mqa32(),
        uib(512, 1, start=5, kernel=0, t=4),                # ConvNext
        mqa32(),
        uib(512, 1, start=5, kernel=0, t=4),                # ConvNext
        mqa32(),
        uib(512, 1, start=5, kernel=0, t=4),                # ConvNext
        mqa32(),
        uib(512, 1, start=5, kernel=0, t=4),                # ConvNext
    )


def _v4(name: str, rows: tuple[Row, ...], stem: int, act: str = "relu", layer_scale: float | None = None
        ) -> FamilySpec:
    return FamilySpec(
        name=name, paper="arXiv:2404.10518; official TF code's block specs (= timm)", rows=rows,
        stem=stem, stem_act=act, head=960, head_act=act, pre_logits=1280, pre_logits_act=act,
        pre_logits_norm=True, head_in_features=True, layer_scale=layer_scale, series="mobilenet_v4",
    )


# The hybrids' UIB and MQA branches carry layer scale (init 1e-5), as in the official code.
MOBILENET_V4_CONV_SMALL = _v4("mobilenet_v4_conv_small", _mnv4_conv_small(), stem=32)
MOBILENET_V4_CONV_MEDIUM = _v4("mobilenet_v4_conv_medium", _mnv4_conv_medium(), stem=32)
MOBILENET_V4_CONV_LARGE = _v4("mobilenet_v4_conv_large", _mnv4_conv_large(), stem=24)
MOBILENET_V4_HYBRID_MEDIUM = _v4("mobilenet_v4_hybrid_medium", _mnv4_hybrid_medium(), stem=32, layer_scale=1e-5)
MOBILENET_V4_HYBRID_LARGE = _v4("mobilenet_v4_hybrid_large", _mnv4_hybrid_large(), stem=24, act="gelu",
                                layer_scale=1e-5)


FAMILIES: dict[str, FamilySpec] = {s.name: s for s in (
    MOBILENET_V1, MOBILENET_V2, MOBILENET_V3_LARGE, MOBILENET_V3_SMALL,
    MOBILENET_V3_LARGE_MINIMAL, MOBILENET_V3_SMALL_MINIMAL, MOBILENEXT,
    MOBILENET_V4_CONV_SMALL, MOBILENET_V4_CONV_MEDIUM, MOBILENET_V4_CONV_LARGE,
    MOBILENET_V4_HYBRID_MEDIUM, MOBILENET_V4_HYBRID_LARGE,
)}
