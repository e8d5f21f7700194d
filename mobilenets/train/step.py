"""One training step, and the inputs it is fed.

``train_inputs`` turns a uint8 batch into the normalised (augmented, possibly downscaled) float
batch; ``train_step`` runs the forward and backward passes (in micro-batches if asked) and the
optimizer step; ``learning_rate`` is the schedule of a config; ``train_resolution`` the input size
of an epoch under progressive resizing.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from ..core.preprocessing import Preprocessing
from . import optim, schedule
from .augment import AugmentConfig, augment, normalize
from .config import TrainConfig


def learning_rate(cfg: TrainConfig, step: int, total: int, steps_per_epoch: int) -> float:
    """The learning rate of ``step`` out of ``total`` planned steps under ``cfg``'s schedule."""
    return schedule.lr_at(step, total, lr=cfg.lr, schedule=cfg.schedule,
                          warmup_steps=int(round(cfg.warmup_epochs * steps_per_epoch)),
                          milestones=tuple(cfg.step_milestones), gamma=cfg.step_gamma,
                          steps_per_epoch=steps_per_epoch)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """``cfg``'s optimizer over ``model``'s parameters, with its weight-decay exemptions."""
    return optim.make_optimizer(model, optimizer=cfg.optimizer, lr=cfg.lr, momentum=cfg.momentum,
                                nesterov=cfg.nesterov, weight_decay=cfg.weight_decay,
                                no_decay_bn_bias=cfg.no_decay_bn_bias, no_decay_depthwise=cfg.no_decay_depthwise)


def augmentation(cfg: TrainConfig) -> AugmentConfig:
    """The batched augmentation of ``cfg`` (alternate flips happen in the batches, not here)."""
    return AugmentConfig(cfg.pad_crop, cfg.flip == "random", cfg.cutout, cfg.policy)


def train_resolution(epoch: int, epochs: int, full: int, start: int, until: float) -> int:
    """Progressive resizing: the input size of ``epoch`` (1-based) of ``epochs``.

    ``start`` px at first, growing linearly in 4 px steps to ``full`` at ``until`` of the run, then
    ``full``; ``start`` 0 (or >= ``full``): always ``full``.
    """
    progress = (epoch - 1) / max(epochs, 1)
    if not start or start >= full or progress >= until:
        return full
    return min(full, start + int((full - start) * progress / until) // 4 * 4)


def train_inputs(x: torch.Tensor, aug: AugmentConfig, pre: Preprocessing, g: torch.Generator, cfg: TrainConfig,
                 device: torch.device, size: int | None = None) -> torch.Tensor:
    """Augment and normalise a uint8 batch (downscaled to ``size`` px if given, antialiased)."""
    xb = normalize(augment(x, aug, pre, g), pre, cfg.channels_last, device)
    if size and size != max(xb.shape[-2:]):
        scale = size / max(xb.shape[-2:])
        xb = F.interpolate(xb, size=(round(xb.shape[-2] * scale), round(xb.shape[-1] * scale)), mode="bilinear",
                           antialias=True, align_corners=False)
        xb = xb.contiguous(memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
    return xb


def train_step(net: nn.Module, optimizer: torch.optim.Optimizer, xb: torch.Tensor, y: torch.Tensor,
               cfg: TrainConfig, bf16: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on the batch ``(xb, y)``: (logits, mean loss).

    With ``cfg.micro_batch`` the batch goes through the model in parts of that many images whose
    gradients add up before the step (DDP all-reduces once, after the last part): a large batch in
    the memory of a small one, no faster. BatchNorm then normalises over each part, as it would
    with that many images per GPU. A loss that is not finite returns at once, without a step.
    """
    n = len(y)
    part = cfg.micro_batch if 0 < cfg.micro_batch < n else n
    optimizer.zero_grad(set_to_none=True)
    logits_parts, total = [], 0.0
    for start in range(0, n, part):
        xs, ys = xb[start:start + part], y[start:start + part]
        defer = start + part < n and isinstance(net, nn.parallel.DistributedDataParallel)
        with net.no_sync() if defer else contextlib.nullcontext():
            with torch.autocast(xb.device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = net(xs)
            loss = F.cross_entropy(logits.float(), ys, label_smoothing=cfg.label_smoothing)
            if not torch.isfinite(loss):
                return logits, loss
            share = loss * (len(ys) / n)  # the whole batch's loss when there is one part
            share.backward()
        logits_parts.append(logits.detach())
        total = total + share.detach()
    optimizer.step()
    return torch.cat(logits_parts) if len(logits_parts) > 1 else logits_parts[0], total
