"""Building bricks shared by every family: channel rounding, conv-norm-act, squeeze-excite, layer scale.

TF "same" padding is an option of every convolution so that TF-trained checkpoints
(Keras applications, timm's ``tf_`` ports) reproduce exactly: TF pads stride-2
convolutions asymmetrically (more at the bottom/right), PyTorch symmetrically.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "hswish": nn.Hardswish,
    "hsigmoid": nn.Hardsigmoid,
    "gelu": nn.GELU,
}


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never losing more than 10%.

    The rule of the official TF code (``_make_divisible``), shared by torchvision and timm.
    """
    min_value = min_value or divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


def create_act(name: str | None) -> nn.Module:
    """An activation module by its table name (``None`` means linear)."""
    if name is None:
        return nn.Identity()
    return ACTIVATIONS[name](inplace=True) if name in ("relu", "relu6") else ACTIVATIONS[name]()


def tf_same_pad(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """(before, after) padding TF's ``padding="SAME"`` uses along one axis."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """Conv2d with TF "same" padding computed from the input size (for stride > 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ph = tf_same_pad(x.shape[-2], self.kernel_size[0], self.stride[0], self.dilation[0])
        pw = tf_same_pad(x.shape[-1], self.kernel_size[1], self.stride[1], self.dilation[1])
        x = F.pad(x, (pw[0], pw[1], ph[0], ph[1]))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def conv2d(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
           bias: bool = False, tf_same: bool = False, dilation: int = 1) -> nn.Conv2d:
    """A conv with PyTorch's symmetric padding, or TF "same" padding where they differ
    (``dilation`` > 1: an atrous conv, as backbones at output stride 16 or 8 use)."""
    if tf_same and stride > 1:
        return Conv2dSame(cin, cout, kernel, stride, padding=0, groups=groups, bias=bias, dilation=dilation)
    return nn.Conv2d(cin, cout, kernel, stride, padding=dilation * (kernel // 2), groups=groups, bias=bias,
                     dilation=dilation)


def is_depthwise(m: nn.Module) -> bool:
    """A depthwise convolution: one group per input channel."""
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels


def swap_class(model: nn.Module, eligible: Callable[[nn.Module], bool], cls: type[nn.Module]) -> int:
    """Give every ``eligible`` module of ``model`` the class ``cls`` (a subclass that changes only
    what ``forward`` does: same parameters, same state dict); returns how many."""
    found = [m for m in model.modules() if eligible(m)]
    for m in found:
        m.__class__ = cls
    return len(found)


def unswap_class(model: nn.Module, cls: type[nn.Module]) -> None:
    """Undo ``swap_class``: modules of class ``cls`` get its base class back."""
    for m in model.modules():
        if type(m) is cls:
            m.__class__ = cls.__bases__[0]


class ConvNormAct(nn.Sequential):
    """conv -> BatchNorm -> activation (``act=None``: linear, as in a projection)."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1,
                 act: str | None = "relu", bn_eps: float = 1e-5, tf_same: bool = False, dilation: int = 1):
        super().__init__(OrderedDict(
            conv=conv2d(cin, cout, kernel, stride, groups, tf_same=tf_same, dilation=dilation),
            bn=nn.BatchNorm2d(cout, eps=bn_eps),
            act=create_act(act),
        ))
        self.out_channels = cout
        self.stride = stride


class SqueezeExcite(nn.Module):
    """Squeeze-and-excite as in MobileNetV3: pool -> 1x1 (ReLU) -> 1x1 -> hard-sigmoid gate.

    The 1x1 convolutions carry biases and no BatchNorm, as in the official code.
    """

    def __init__(self, channels: int, squeeze: int, gate: str = "hsigmoid"):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.gate = create_act(gate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.fc2(self.act(self.fc1(s))))


class LayerScale(nn.Module):
    """A learned per-channel scale on a residual branch (CaiT; MobileNetV4's hybrids), NCHW."""

    def __init__(self, channels: int, init: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((channels,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma.view(1, -1, 1, 1)
