"""The block types of the family, one class each.

* ``DepthwiseSeparable`` (MobileNetV1): depthwise 3x3 -> pointwise 1x1, both with activation.
* ``InvertedResidual`` (MobileNetV2/V3): expand 1x1 -> depthwise kxk -> [SE] -> linear project 1x1,
  residual when stride is 1 and the shape is kept (``skip=False``: never, as torchvision's dilated
  stage does for the block whose stride it turned into dilation).
* ``SandGlass`` (MobileNeXt): depthwise -> linear reduce 1x1 -> expand 1x1 -> linear depthwise,
  the residual on the wide tensors, optionally on a fraction of the channels only
  (the identity tensor multiplier).
* ``FusedInvertedResidual`` (MobileNetV4's FusedIB): expand kxk (strided) -> linear project 1x1.
* ``UniversalInvertedBottleneck`` (MobileNetV4's UIB): [linear depthwise] -> expand 1x1 ->
  [depthwise] -> linear project 1x1 -> [layer scale]; the stride sits on the middle depthwise, or
  on the first when there is no middle one.
* ``MobileMQA`` (MobileNetV4): BN -> multi-query attention (one key/value head shared by all query
  heads, keys and values optionally downsampled by a strided depthwise conv) -> [layer scale],
  as a residual.
"""
from __future__ import annotations

import torch
from torch import nn

from .layers import ConvNormAct, LayerScale, SqueezeExcite, conv2d, make_divisible


class DepthwiseSeparable(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, act: str = "relu6",
                 bn_eps: float = 1e-5, tf_same: bool = False, dilation: int = 1):
        super().__init__()
        self.dw = ConvNormAct(cin, cin, kernel, stride, groups=cin, act=act, bn_eps=bn_eps, tf_same=tf_same,
                              dilation=dilation)
        self.pw = ConvNormAct(cin, cout, 1, act=act, bn_eps=bn_eps)
        self.residual_channels = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.dw(x))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int, kernel: int = 3, stride: int = 1,
                 act: str = "relu6", se: bool = False, bn_eps: float = 1e-5, tf_same: bool = False,
                 dilation: int = 1, skip: bool = True):
        super().__init__()
        kw = dict(bn_eps=bn_eps)
        # The first block of V2/V3 has expansion 1: no expand conv (the stem is not part of it).
        self.expand = ConvNormAct(cin, mid, 1, act=act, **kw) if mid != cin else nn.Identity()
        self.dw = ConvNormAct(mid, mid, kernel, stride, groups=mid, act=act, tf_same=tf_same, dilation=dilation,
                              **kw)
        # SE sits after the depthwise activation; squeeze channels are a multiple of 8.
        self.se = SqueezeExcite(mid, make_divisible(mid / 4)) if se else nn.Identity()
        self.project = ConvNormAct(mid, cout, 1, act=None, **kw)
        self.residual_channels = cin if skip and stride == 1 and cin == cout else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.se(self.dw(self.expand(x))))
        return out + x if self.residual_channels else out

    def expanded(self, x: torch.Tensor) -> torch.Tensor:
        """The first half, up to the expansion (SSDLite taps there; blocks without shortcut)."""
        return self.expand(x)

    def from_expanded(self, x: torch.Tensor) -> torch.Tensor:
        """The second half: ``forward(x) == from_expanded(expanded(x))`` without a shortcut."""
        return self.project(self.se(self.dw(x)))


class SandGlass(nn.Module):
    """MobileNeXt's sandglass block, with the layout switches of the official code.

    ``dw_first``/``dw_last`` say whether the outer depthwise convs exist (the official code drops
    them in the transition blocks), ``identity`` is the number of leading channels that receive
    the shortcut (all of them when the identity tensor multiplier is 1).
    """

    def __init__(self, cin: int, hidden: int, cout: int, stride: int = 1, dw_first: bool = True,
                 dw_last: bool = True, identity: int = 0, act: str = "relu6",
                 bn_eps: float = 1e-5, tf_same: bool = False, dilation: int = 1):
        super().__init__()
        kw = dict(bn_eps=bn_eps, dilation=dilation)
        self.dw1 = ConvNormAct(cin, cin, 3, 1, groups=cin, act=act, **kw) if dw_first else nn.Identity()
        self.reduce = ConvNormAct(cin, hidden, 1, act=None, bn_eps=bn_eps)
        self.expand = ConvNormAct(hidden, cout, 1, act=act, bn_eps=bn_eps)
        self.dw2 = (ConvNormAct(cout, cout, 3, stride, groups=cout, act=None, tf_same=tf_same, **kw)
                    if dw_last else nn.Identity())
        self.residual_channels = identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.dw2(self.expand(self.reduce(self.dw1(x))))
        k = self.residual_channels
        if not k:
            return out
        if k == out.shape[1]:
            return out + x
        return torch.cat([out[:, :k] + x[:, :k], out[:, k:]], dim=1)


class FusedInvertedResidual(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int, kernel: int = 3, stride: int = 1, act: str = "relu",
                 bn_eps: float = 1e-5, tf_same: bool = False, dilation: int = 1):
        super().__init__()
        self.expand = ConvNormAct(cin, mid, kernel, stride, act=act, bn_eps=bn_eps, tf_same=tf_same,
                                  dilation=dilation)
        self.project = ConvNormAct(mid, cout, 1, act=None, bn_eps=bn_eps)
        self.residual_channels = cin if stride == 1 and cin == cout else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.expand(x))
        return out + x if self.residual_channels else out


class UniversalInvertedBottleneck(nn.Module):
    """``start``/``middle``: the depthwise kernels (0: none); ExtraDW has both, IB the middle one,
    ConvNext the start one, FFN neither. ``layer_scale``: its init, or None for none."""

    def __init__(self, cin: int, mid: int, cout: int, start: int = 0, middle: int = 3, stride: int = 1,
                 act: str = "relu", bn_eps: float = 1e-5, tf_same: bool = False, dilation: int = 1,
                 layer_scale: float | None = None):
        super().__init__()
        kw = dict(bn_eps=bn_eps, tf_same=tf_same, dilation=dilation)
        self.dw_start = (ConvNormAct(cin, cin, start, 1 if middle else stride, groups=cin, act=None, **kw)
                         if start else nn.Identity())
        self.expand = ConvNormAct(cin, mid, 1, act=act, bn_eps=bn_eps)
        self.dw_mid = ConvNormAct(mid, mid, middle, stride, groups=mid, act=act, **kw) if middle else nn.Identity()
        self.project = ConvNormAct(mid, cout, 1, act=None, bn_eps=bn_eps)
        self.layer_scale = LayerScale(cout, layer_scale) if layer_scale is not None else nn.Identity()
        self.residual_channels = cin if stride == 1 and cin == cout else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer_scale(self.project(self.dw_mid(self.expand(self.dw_start(x)))))
        return out + x if self.residual_channels else out

    def expanded(self, x: torch.Tensor) -> torch.Tensor:
        """As ``InvertedResidual.expanded``: the start depthwise and the expansion."""
        return self.expand(self.dw_start(x))

    def from_expanded(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer_scale(self.project(self.dw_mid(x)))


class MobileMQA(nn.Module):
    """Mobile multi-query attention over an NCHW map: ``heads`` query heads of ``key_dim``, one key
    and one value head of ``key_dim``, keys and values from the map downsampled by ``kv_stride``
    (a linear depthwise ``kernel`` conv), queries at full resolution; output projection to ``cout``."""

    def __init__(self, cin: int, cout: int, heads: int, key_dim: int, kv_stride: int = 1, kernel: int = 3,
                 bn_eps: float = 1e-5, tf_same: bool = False, dilation: int = 1, layer_scale: float | None = None):
        super().__init__()
        self.heads, self.key_dim, self.kv_stride = heads, key_dim, kv_stride
        self.norm = nn.BatchNorm2d(cin, eps=bn_eps)
        self.query = conv2d(cin, heads * key_dim, 1)

        def kv() -> nn.Module:
            proj = conv2d(cin, key_dim, 1)
            if kv_stride == 1:
                return proj
            down = ConvNormAct(cin, cin, kernel, kv_stride, groups=cin, act=None, bn_eps=bn_eps, tf_same=tf_same,
                               dilation=dilation)
            return nn.Sequential(down, proj)

        self.key, self.value = kv(), kv()
        self.output = conv2d(heads * key_dim, cout, 1)
        self.layer_scale = LayerScale(cout, layer_scale) if layer_scale is not None else nn.Identity()
        self.residual_channels = cin if cin == cout else 0

    def logits(self, y: torch.Tensor) -> torch.Tensor:
        """The scaled attention logits (b, heads * hw, hw') of the normalised map ``y``."""
        b, d = y.shape[0], self.key_dim
        # The one key/value head serves every query head: the heads are stacked along the query
        # positions (b, heads * hw, d), so both products are ``bmm`` without a broadcast (a broadcast,
        # or ``@``'s decomposition, leaves expand copies outside ExecuTorch's XNNPACK delegate).
        # (-1 rather than h * w: no arithmetic on traced sizes, which Core ML's converter cannot cast)
        q = self.query(y).reshape(b, self.heads, d, -1).transpose(-1, -2).reshape(b, -1, d)
        return torch.bmm(q * d ** -0.5, self.key(y).flatten(2))                          # k: b, d, hw'

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        heads, d = self.heads, self.key_dim
        y = self.norm(x)
        attn = torch.softmax(self.logits(y), dim=-1)                                      # b, heads * hw, hw'
        v = self.value(y).flatten(2).transpose(-1, -2)                                    # b, hw', d
        out = torch.bmm(attn, v).reshape(b, heads, -1, d).transpose(-1, -2).reshape(b, heads * d, h, w)
        out = self.layer_scale(self.output(out))
        return out + x if self.residual_channels else out
