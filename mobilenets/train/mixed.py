"""bf16 for the 1x1 convolutions only, in training (``--bf16-pointwise``).

The 1x1 convolutions are the GEMMs of a MobileNet, where a CPU with AVX512-BF16 (or AMX) does
twice the work per instruction in bfloat16. Autocasting the whole model (``--bf16 on``) also puts
the depthwise convolutions, which are memory-bound, through oneDNN's bf16 kernels and adds casts
around every BN, which costs more than it saves on a CPU; here only the 1x1 convolutions compute
in bf16 (fp32 in, out, weights and optimizer state; the casts are autocast's, so gradients flow
back in fp32). ``benchmarks/train_throughput.py`` measures both; the figures are in
``benchmarks/results``. Eval, EMA copies in eval mode, the state dict and exports are unchanged:
the class swap only changes what a training forward does.
"""
from __future__ import annotations

import torch
from torch import nn

from ..models.layers import swap_class, unswap_class


class Bf16PointwiseConv2d(nn.Conv2d):
    """A 1x1 ``nn.Conv2d`` that computes in bfloat16 (fp32 in and out) in a training forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled() and x.dtype == torch.float32:
            with torch.autocast(x.device.type, dtype=torch.bfloat16):
                return super().forward(x).float()
        return super().forward(x)


def eligible(m: nn.Module) -> bool:
    """A plain 1x1 convolution (no groups): the model's pointwise expansions and projections."""
    return type(m) is nn.Conv2d and m.kernel_size == (1, 1) and m.groups == 1


def enable(model: nn.Module) -> int:
    """Switch the model's 1x1 convolutions to bf16 training forwards; returns how many."""
    return swap_class(model, eligible, Bf16PointwiseConv2d)


def disable(model: nn.Module) -> None:
    """Undo ``enable`` (plain ``nn.Conv2d`` again)."""
    unswap_class(model, Bf16PointwiseConv2d)
