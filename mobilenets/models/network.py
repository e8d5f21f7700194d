"""One network for every family: stem -> blocks -> head, built from a paper table.

``ModelConfig`` is everything needed to rebuild a model; it travels with checkpoints and
exports. Its ``expand_rule``/``head_rule``/``stem_scaled`` fields reproduce the small ways in
which reference implementations round channels at widths other than 1.0; ``output_stride``,
``dilation_rule`` and ``reduced_tail`` shape it as a backbone (``models.backbone``).
While the blocks are built, the network records ``feature_info``: the feature map at the end of
each stride (channels, reduction, module), in timm's semantics.
"""
from __future__ import annotations

import math
import numbers
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import nn

if TYPE_CHECKING:
    from .meta import CheckpointMeta

from ..core.errors import UsageError
from .blocks import (
    DepthwiseSeparable,
    FusedInvertedResidual,
    InvertedResidual,
    MobileMQA,
    SandGlass,
    UniversalInvertedBottleneck,
)
from .layers import ConvNormAct, create_act, make_divisible
from .specs import FAMILIES, FamilySpec, Row

CIFAR_STEM_STRIDES = 3  # the PyTorch MobileNetV3 seed: stride 1 in the stem and the next two stride-2 layers
# Bounds that keep a typo (``--width 1e6``, ``--resolution 100000``) from allocating terabytes: far
# above every published variant (width <= 1.4, resolution <= 224), far below what breaks a machine.
MAX_WIDTH = 4.0
MAX_RESOLUTION = 4096
OUTPUT_STRIDES = (8, 16, 32)
DILATION_RULES = ("timm", "torchvision")


class Placement(NamedTuple):
    """Where one strided layer (the stem, a block) runs: its stride and dilation, and the input
    pixels per output pixel after it (``reduction``); ``table_stride`` is the paper's stride;
    ``skip``: whether a shortcut may join it (torchvision's rule gives none to a stride made dilation)."""
    table_stride: int
    stride: int
    dilation: int
    reduction: int
    skip: bool = True


@dataclass
class ModelConfig:
    family: str
    width: float = 1.0
    num_classes: int = 1000
    in_chans: int = 3
    resolution: int = 224
    dropout: float | None = None       # None: the family's default
    cifar_stem: int = 0                # how many leading stride-2 layers become stride 1 (True -> 3)
    tf_same: bool = False              # TF "same" padding on strided convs (TF-trained weights)
    bn_eps: float | None = None        # None: the family's default
    identity_mult: float = 1.0         # MobileNeXt: fraction of channels on the shortcut
    stem_scaled: bool | None = None    # None: the family's default
    expand_rule: str = "ratio"         # V3: "ratio" (TF, Keras, timm) or "scale" (torchvision)
    head_rule: str = "keep_for_thin"   # "keep_for_thin" (TF, Keras, timm) or "scale" (torchvision V3)
    output_stride: int = 32            # 16 or 8: the last strides become dilation (backbones)
    dilation_rule: str = "timm"        # "timm" (and TF-slim): a stride made dilation dilates the layers after
                                       # it; "torchvision" (dilated=True): that layer too
    reduced_tail: bool = False         # V3: the last stage at half width (torchvision's detection backbones)
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.cifar_stem is True:
            self.cifar_stem = CIFAR_STEM_STRIDES
        self.cifar_stem = int(self.cifar_stem or 0)
        self.validate()

    @property
    def spec(self) -> FamilySpec:
        return FAMILIES[self.family]

    @property
    def rows(self) -> tuple[Row, ...]:
        """The family's table rows, with ``reduced_tail`` applied: from the last strided row on,
        half the output channels, and half the expansion after that row (torchvision's rule)."""
        rows = self.spec.rows
        if not self.reduced_tail:
            return rows
        last = max(i for i, r in enumerate(rows) if r.stride == 2)
        tail = tuple(replace(r, out=r.out // 2, exp=r.exp if i == 0 or r.exp is None else r.exp // 2)
                     for i, r in enumerate(rows[last:]))
        return rows[:last] + tail

    @property
    def layout(self) -> list[Placement]:
        """The stem's and every block's placement, in order: ``cifar_stem`` makes the first strides 1,
        ``output_stride`` turns the strides beyond it into dilation (by ``dilation_rule``)."""
        table = [2] + [r.stride if i == 0 else 1 for r in self.rows for i in range(r.repeat)]
        out, reduction, dilation, skipped = [], 1, 1, 0
        for s in table:
            stride, d, skip = s, dilation, s == 1
            if s > 1 and skipped < self.cifar_stem:
                stride, skipped, skip = 1, skipped + 1, True
            elif s > 1 and reduction * s > self.output_stride:
                stride, dilation = 1, dilation * s
                torchvision = self.dilation_rule == "torchvision"
                d, skip = (dilation, False) if torchvision else (d, True)
            reduction *= stride
            out.append(Placement(s, stride, d, reduction, skip))
        return out

    @property
    def total_stride(self) -> int:
        """Input pixels per pixel of the last feature map (32 for a plain MobileNet)."""
        return self.layout[-1].reduction

    def validate(self) -> None:
        if self.family not in FAMILIES:
            raise UsageError(f"unknown family {self.family!r}; known: {', '.join(FAMILIES)}")
        width_ok = isinstance(self.width, numbers.Real) and math.isfinite(self.width) and 0 < self.width <= MAX_WIDTH
        resolution_ok = isinstance(self.resolution, numbers.Integral) and 0 < self.resolution <= MAX_RESOLUTION
        checks = [
            (width_ok, f"width must be > 0 and at most {MAX_WIDTH:g}, got {self.width}"),
            (resolution_ok, f"resolution must be a whole number of pixels, at most {MAX_RESOLUTION}, "
                            f"got {self.resolution}"),
            (self.num_classes > 0, f"num_classes must be > 0, got {self.num_classes}"),
            (self.in_chans > 0, f"in_chans must be > 0, got {self.in_chans}"),
            (0 < self.identity_mult <= 1, f"identity_mult must be in (0, 1], got {self.identity_mult}"),
            (self.dropout is None or 0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}"),
            (self.cifar_stem >= 0, f"cifar_stem must be >= 0, got {self.cifar_stem}"),
            (self.output_stride in OUTPUT_STRIDES,
             f"output_stride must be one of {', '.join(map(str, OUTPUT_STRIDES))}, got {self.output_stride!r}"),
            (self.dilation_rule in DILATION_RULES, f"dilation_rule must be 'timm' or 'torchvision': "
                                                   f"{self.dilation_rule!r}"),
            (not self.reduced_tail or self.family.startswith("mobilenet_v3"),
             f"reduced_tail is torchvision's option for MobileNetV3; {self.family} has none"),
            (self.expand_rule in ("ratio", "scale"), f"expand_rule must be 'ratio' or 'scale': {self.expand_rule!r}"),
            (self.head_rule in ("keep_for_thin", "scale"), f"head_rule must be 'keep_for_thin' or 'scale': "
                                                           f"{self.head_rule!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)
        if self.resolution < self.total_stride:
            raise UsageError(f"resolution {self.resolution} is too small for {self.family}: its strides "
                             f"need at least {self.total_stride} pixels")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def replace(self, **changes) -> ModelConfig:
        return replace(self, **changes)


class MobileNet(nn.Module):
    """Any MobileNet: ``stem -> blocks -> head -> pool -> [pre_logits] -> dropout -> classifier``.

    ``checkpoint_meta`` says what the model is and how to feed it (``models.meta.CheckpointMeta``);
    the loaders in ``weights`` set it (``create_model``, ``load_checkpoint``, the converters), and
    training on the model it writes; it is ``None`` on a bare ``MobileNet(config)`` or ``build_model``.
    """

    checkpoint_meta: CheckpointMeta | None = None
    qat_state: dict | None = None  # a QAT checkpoint's learned quantization parameters (train.qat)

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        spec, w = config.spec, config.width
        eps = config.bn_eps if config.bn_eps is not None else spec.bn_eps
        dropout = config.dropout if config.dropout is not None else spec.dropout
        layout = iter(config.layout)
        kw = dict(bn_eps=eps, tf_same=config.tf_same)

        def ch(c: float, keep_for_thin: bool = False) -> int:
            wc = max(w, 1.0) if keep_for_thin else w
            if spec.rounding == "floor":
                return max(int(c * wc), 8)
            return make_divisible(c * wc)

        stem_scaled = spec.stem_scaled if config.stem_scaled is None else config.stem_scaled
        cin = ch(spec.stem) if stem_scaled else spec.stem
        stem = next(layout)
        self.stem = ConvNormAct(config.in_chans, cin, 3, stem.stride, act=spec.stem_act, **kw)
        points = [("stem", cin, stem)]  # (module, channels, placement) of the stem and every block

        blocks, base_in = [], spec.stem
        for row in config.rows:
            for _ in range(row.repeat):
                place = next(layout)
                cout = ch(row.out, row.keep_for_thin)
                blocks.append(self._block(row, cin, cout, base_in, place, kw))
                points.append((f"blocks.{len(blocks) - 1}", cout, place))
                cin, base_in = cout, row.out
        self.blocks = nn.Sequential(*blocks)

        if spec.head or spec.head_ratio:
            keep = spec.head_keep_for_thin and config.head_rule == "keep_for_thin"
            head = ch(spec.head, keep) if spec.head else make_divisible(cin * spec.head_ratio)
            self.head = ConvNormAct(cin, head, 1, act=spec.head_act, bn_eps=eps)
            cin = head
        else:
            self.head = nn.Identity()
        if spec.head_in_features:
            points.append(("head", cin, points[-1][2]._replace(table_stride=1)))
        self.feature_info = _feature_info(points)
        self.num_features = cin
        self.pool = nn.AdaptiveAvgPool2d(1)
        if spec.pre_logits:
            keep = config.head_rule == "keep_for_thin" and w <= 1
            pre_logits = spec.pre_logits // 2 if config.reduced_tail else spec.pre_logits
            hidden = pre_logits if keep else make_divisible(pre_logits * w)
            layers = OrderedDict(fc=nn.Linear(cin, hidden, bias=not spec.pre_logits_norm))
            if spec.pre_logits_norm:
                layers["bn"] = nn.BatchNorm1d(hidden, eps=eps)
            layers["act"] = create_act(spec.pre_logits_act)
            self.pre_logits = nn.Sequential(layers)
            cin = hidden
        else:
            self.pre_logits = nn.Identity()
        self.head_hidden_size = cin
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(cin, config.num_classes)
        _init_weights(self)

    def _block(self, row: Row, cin: int, cout: int, base_in: int, place: Placement, kw: dict) -> nn.Module:
        cfg = self.config
        stride, table_stride = place.stride, place.table_stride
        kw = dict(kw, dilation=place.dilation)
        if row.block == "ds":
            return DepthwiseSeparable(cin, cout, row.kernel, stride, act=row.act, **kw)
        if row.block == "ir":
            if row.exp is not None and cfg.expand_rule == "scale":
                mid = make_divisible(row.exp * cfg.width)
            else:
                ratio = row.t if row.t is not None else row.exp / base_in
                mid = cin if ratio == 1 else make_divisible(cin * ratio) if row.exp is not None else round(cin * ratio)
            return InvertedResidual(cin, mid, cout, row.kernel, stride, act=row.act, se=row.se, skip=place.skip, **kw)
        if row.block == "sg":
            # Layout rules of the official MobileNeXt code.
            hidden = cin // int(row.t)
            if hidden < cout / 6:
                hidden = make_divisible(math.ceil(cout / 6), 16)
            keep_3x3 = row.repeat == 1 and row.stride == 1
            full = row.t == 2 or cin == cout or keep_3x3
            identity = 0
            if cin == cout and table_stride == 1 and not keep_3x3 and row.t != 2:
                identity = max(1, round(cout * cfg.identity_mult))
            return SandGlass(cin, hidden, cout, stride, dw_first=full, dw_last=full or table_stride == 2,
                             identity=identity, act=row.act, **kw)
        if row.block == "conv":
            return ConvNormAct(cin, cout, row.kernel, stride, act=row.act, **kw)
        if row.block == "fused":
            return FusedInvertedResidual(cin, make_divisible(cin * row.t), cout, row.kernel, stride, act=row.act, **kw)
        if row.block == "uib":
            return UniversalInvertedBottleneck(cin, make_divisible(cin * row.t), cout, row.start, row.kernel, stride,
                                               act=row.act, layer_scale=self.config.spec.layer_scale, **kw)
        if row.block == "mqa":
            return MobileMQA(cin, cout, row.heads, row.key_dim, row.kv_stride, row.kernel,
                             layer_scale=self.config.spec.layer_scale, **kw)
        raise ValueError(f"unknown block type {row.block!r}")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pre_logits(torch.flatten(self.pool(x), 1))
        return x if pre_logits else self.classifier(self.dropout(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh classifier for ``num_classes`` (fine-tuning); the rest is kept."""
        self.classifier = nn.Linear(self.head_hidden_size, num_classes)
        nn.init.normal_(self.classifier.weight, 0, 0.01)
        nn.init.zeros_(self.classifier.bias)
        self.config = self.config.replace(num_classes=num_classes)


def _feature_info(points: list[tuple[str, int, Placement]]) -> list[dict]:
    """timm's feature points: the stem when the first block strides, every layer followed by a
    strided one (by the paper's strides), and the last layer. One dict per point: ``num_chs``,
    ``reduction``, ``module`` (its name in the network), ``stage`` (its index)."""
    keep = [i for i in range(1, len(points)) if i + 1 == len(points) or points[i + 1][2].table_stride > 1]
    if points[1][2].table_stride > 1:
        keep.insert(0, 0)
    return [dict(num_chs=points[i][1], reduction=points[i][2].reduction, module=points[i][0], stage=n)
            for n, i in enumerate(keep)]


def _init_weights(model: nn.Module) -> None:
    """The initialisation of the official PyTorch ports (He for convs, N(0, 0.01) for linear)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP/DataParallel (``.module``) or ``torch.compile`` (``._orig_mod``)."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner
