"""Optimizers with the papers' weight-decay exemptions, and the EMA of weights."""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..models.layers import is_depthwise
from ..models.network import unwrap

OPTIMIZERS = ("sgd", "rmsprop", "adamw")


def param_groups(model: nn.Module, weight_decay: float, no_decay_bn_bias: bool,
                 no_decay_depthwise: bool = False) -> list[dict]:
    """Parameters with and without weight decay: BN weights and biases (1-d), and optionally the
    depthwise filters, go without."""
    exempt = {id(m.weight) for m in model.modules() if is_depthwise(m)} if no_decay_depthwise else set()
    if not weight_decay or not (no_decay_bn_bias or exempt):
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if (no_decay_bn_bias and p.ndim <= 1) or id(p) in exempt else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, *, optimizer: str = "sgd", lr: float, momentum: float = 0.9,
                   nesterov: bool = False, weight_decay: float = 0.0, no_decay_bn_bias: bool = True,
                   no_decay_depthwise: bool = False) -> torch.optim.Optimizer:
    """SGD, TF-style RMSProp (the MobileNet papers') or AdamW over ``param_groups``."""
    groups = param_groups(model, weight_decay, no_decay_bn_bias, no_decay_depthwise)
    if optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0)
    if optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, alpha=0.9, eps=0.0316, momentum=momentum)
    if optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise ValueError(f"unknown optimizer {optimizer!r} (one of {', '.join(OPTIMIZERS)})")


class EMA:
    """Exponential moving average of weights (float buffers averaged too), with timm's warm-up.

    A QAT network's quantization state is not averaged: the average takes the model's current
    ranges (scale, zero point, observed min/max; averaging min/max that start at +-inf gives NaN)
    and keeps its own observers off, so validating it never moves them."""

    def __init__(self, model: nn.Module, decay: float):
        self.module = copy.deepcopy(unwrap(model)).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self._copied = _quantization_buffers(self.module)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        src = unwrap(model)
        torch._foreach_lerp_(list(self.module.parameters()), list(src.parameters()), 1 - d)
        for (name, e), m in zip(self.module.named_buffers(), src.buffers(), strict=True):
            if name in self._copied:
                if not name.endswith("observer_enabled"):  # the average's observers stay off
                    e.resize_(m.shape).copy_(m)  # a per-channel observer is sized on its first batch
            elif e.is_floating_point():
                e.lerp_(m, 1 - d)
            else:
                e.copy_(m)


def _quantization_buffers(model: nn.Module) -> set[str]:
    """Names of the buffers of ``model``'s fake quantizers (QAT) and their observers."""
    names = set()
    for prefix, module in model.named_modules():
        if hasattr(module, "fake_quant_enabled") and hasattr(module, "observer_enabled"):
            names.update(f"{prefix}.{n}" if prefix else n for n, _ in module.named_buffers())
    return names
