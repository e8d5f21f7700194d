"""The three block types of the family, one class each.

* ``DepthwiseSeparable`` (MobileNetV1): depthwise 3x3 -> pointwise 1x1, both with activation.
* ``InvertedResidual`` (MobileNetV2/V3): expand 1x1 -> depthwise kxk -> [SE] -> linear project 1x1,
  residual when stride is 1 and the shape is kept (``skip=False``: never, as torchvision's dilated
  stage does for the block whose stride it turned into dilation).
* ``SandGlass`` (MobileNeXt): depthwise -> linear reduce 1x1 -> expand 1x1 -> linear depthwise,
  the residual on the wide tensors, optionally on a fraction of the channels only
  (the identity tensor multiplier).
"""
from __future__ import annotations

import torch
from torch import nn

from .layers import ConvNormAct, SqueezeExcite, make_divisible


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
