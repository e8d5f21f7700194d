"""The training engine: ``fit`` (train + validate every epoch, run directory, resume) and
``evaluate`` / ``evaluate_checkpoint`` (top-1, top-5, loss).

Determinism: every epoch's shuffle and augmentation come from generators seeded by
(seed, epoch, rank); the global RNG (dropout) is saved with the model, EMA, optimizer and step
in one atomic ``state.pt`` per epoch. A resumed run therefore replays the epochs it missed and
ends with the same metrics as an uninterrupted one. The learning rate is a pure function of
the step, so no scheduler state is needed.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import UsageError
from ..core.files import atomic_path, atomic_write
from ..core.hardware import resolve_device
from ..core.preprocessing import Preprocessing
from ..data.datasets import DataSplits, ImageTensors, LazyImageFolder, collate_skip, load_data
from ..models.layers import is_depthwise
from ..weights.io import CheckpointMeta, load_checkpoint, save_checkpoint, unwrap
from . import distributed as D
from . import fastdw, mixed
from .allocator import keep_freed_memory
from .augment import AugmentConfig, augment, mirror, normalize
from .checkpoint import load_state, rng_state, save_state, set_rng_state
from .recipes import get_recipe


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainConfig:
    """Everything a run needs; ``config.json`` in the run directory is this, resolved."""
    model: str = "mobilenet_v3_small"
    data: str = "synthetic"
    recipe: str = "default"
    width: float | None = None
    cifar_stem: int = 0
    dropout: float | None = None
    resolution: int | None = None
    preset: str | None = None            # "cifar" | "imagenet"; default: from the data
    weights: str | None = None           # fine-tune from this checkpoint (classifier re-initialised if needed)
    epochs: int = 30
    batch_size: int = 128
    micro_batch: int = 0                 # >0: each batch goes through the model in parts of this many images
    optimizer: str = "sgd"               # sgd | rmsprop | adamw
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    no_decay_bn_bias: bool = True
    no_decay_depthwise: bool = False     # no weight decay on depthwise filters either (MobileNetV1 paper, sec. 4)
    schedule: str = "cosine"             # step | cosine | onecycle | linear | constant
    warmup_epochs: float = 0.0
    step_milestones: tuple = (0.5, 0.75)  # fractions of the run (step schedule)
    step_gamma: float = 0.1
    label_smoothing: float = 0.0
    zero_init_residual: bool = False     # from scratch: the last BN of each residual branch starts at 0
    ema_decay: float = 0.0               # 0: off; else EMA of weights, which is what is validated and saved
    pad_crop: int = 4
    flip: str = "random"                 # none | random | alternate (each image mirrored every other epoch)
    cutout: int = 0
    resize_from: int = 0                 # progressive resizing: train at this size first (px; 0: off) ...
    resize_until: float = 0.5            # ... growing by 4 px steps to full size at this fraction of the epochs
    policy: str | None = None            # autoaugment | randaugment
    channels_last: bool = True
    bf16: bool | str = "auto"            # autocast to bfloat16 where the CPU/GPU supports it
    fast_depthwise: bool = True          # CPU: depthwise weight gradients by a compiled loop (train/fastdw.py)
    bf16_pointwise: bool = False         # bf16 in the 1x1 convolutions only, where supported (train/mixed.py)
    compile: bool = False                # torch.compile the training step's model (fuses BN, activations, SE)
    keep_memory: bool = True             # CPU: malloc keeps freed memory, no page faults per step (train/allocator.py)
    tta: str = "none"                    # validation views: none | mirror | mirror-shift (see TTA_SHIFTS)
    val_every: int = 1                   # validate epoch 1, every N-th epoch and the last
    seed: int = 0
    val_size: float = 0.1                # held out of train/ when a folder has no val/ (count or fraction)
    strict: bool = False                 # unreadable images are errors instead of skipped
    time_budget_min: float | None = None  # pick the epochs (<= epochs) that fit in this wall time; 0: none
    workers: int = 2                     # DataLoader workers for folders of large images
    threads: int | None = None           # torch intra-op threads (None: torch's default)
    device: str = "auto"
    output: str | None = None
    download: bool = True
    eval_batch_size: int = 100           # small batches stay in cache: ~1.9x the images/s of 500 on a CPU

    def to_dict(self) -> dict:
        d = asdict(self)
        d["step_milestones"] = list(self.step_milestones)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        if "step_milestones" in d:
            d["step_milestones"] = tuple(d["step_milestones"])
        if isinstance(d.get("tta"), bool):  # run directories of earlier versions: a flag for mirror TTA
            d["tta"] = "mirror" if d["tta"] else "none"
        if isinstance(d.get("flip"), bool):  # ... and a flag for random flips
            d["flip"] = "random" if d["flip"] else "none"
        return cls(**d)


def resolve_config(recipe: str = "default", **overrides) -> TrainConfig:
    """Defaults <- the named recipe <- ``overrides`` (``None`` values mean "not given")."""
    values = TrainConfig().to_dict()
    values.update(get_recipe(recipe))
    values["recipe"] = recipe
    unknown = [k for k in overrides if k not in values]
    if unknown:
        raise UsageError(f"unknown training option(s): {', '.join(unknown)}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    cfg = TrainConfig.from_dict(values)
    _validate(cfg)
    return cfg


def _validate(cfg: TrainConfig) -> None:
    checks = [
        (cfg.epochs >= 1, f"epochs must be >= 1, got {cfg.epochs}"),
        (cfg.batch_size >= 1, f"batch size must be >= 1, got {cfg.batch_size}"),
        (cfg.micro_batch >= 0, f"micro-batch must be >= 0 (0: whole batches), got {cfg.micro_batch}"),
        (cfg.micro_batch == 0 or cfg.batch_size % cfg.micro_batch == 0,
         f"micro-batch {cfg.micro_batch} does not divide the batch size {cfg.batch_size}"),
        (cfg.lr > 0, f"lr must be > 0, got {cfg.lr}"),
        (cfg.optimizer in ("sgd", "rmsprop", "adamw"), f"optimizer must be sgd, rmsprop or adamw: {cfg.optimizer!r}"),
        (cfg.schedule in ("step", "cosine", "onecycle", "linear", "constant"),
         f"schedule must be step, cosine, onecycle, linear or constant: {cfg.schedule!r}"),
        (0 <= cfg.label_smoothing < 1, f"label smoothing must be in [0, 1), got {cfg.label_smoothing}"),
        (cfg.dropout is None or 0 <= cfg.dropout < 1, f"dropout must be in [0, 1), got {cfg.dropout}"),
        (0 <= cfg.ema_decay < 1, f"ema decay must be in [0, 1), got {cfg.ema_decay}"),
        (cfg.policy in (None, "autoaugment", "randaugment"), f"policy must be autoaugment or randaugment: "
                                                              f"{cfg.policy!r}"),
        (cfg.time_budget_min is None or cfg.time_budget_min >= 0, "time budget must be >= 0 minutes (0: none)"),
        (cfg.warmup_epochs >= 0, "warm-up epochs must be >= 0"),
        (cfg.val_every >= 1, f"val_every must be >= 1, got {cfg.val_every}"),
        (cfg.resize_from == 0 or cfg.resize_from >= 8, f"resize_from must be 0 (off) or >= 8 px: {cfg.resize_from}"),
        (0 < cfg.resize_until <= 1, f"resize_until must be in (0, 1], got {cfg.resize_until}"),
        (cfg.tta in TTA_SHIFTS, f"tta must be {', '.join(TTA_SHIFTS)}: {cfg.tta!r}"),
        (cfg.flip in FLIPS, f"flip must be {', '.join(FLIPS)}: {cfg.flip!r}"),
        (cfg.bf16 in (True, False, "auto"), f"bf16 must be true, false or auto, got {cfg.bf16!r}"),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message)


# ---------------------------------------------------------------------------------------- pieces

def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_bf16()


def use_bf16(cfg: TrainConfig, device: torch.device) -> bool:
    return bf16_supported(device) if cfg.bf16 == "auto" else bool(cfg.bf16)


def lr_at(step: int, total: int, steps_per_epoch: int, cfg: TrainConfig) -> float:
    """The learning rate of ``step`` (0-based) out of ``total``: warm-up then the schedule."""
    warm = int(round(cfg.warmup_epochs * steps_per_epoch))
    if cfg.schedule == "onecycle":  # as torch's OneCycleLR: lr/25 up to lr, cosine down to lr/25e4
        warm = max(warm, 1)
        lo, end = cfg.lr / 25, cfg.lr / 25e4
        if step < warm:
            return lo + (cfg.lr - lo) * step / warm
        t = (step - warm) / max(total - warm, 1)
        return end + (cfg.lr - end) * 0.5 * (1 + math.cos(math.pi * t))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    t = (step - warm) / max(total - warm, 1)
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * t))
    if cfg.schedule == "linear":
        return cfg.lr * (1 - t)
    if cfg.schedule == "step":
        return cfg.lr * cfg.step_gamma ** sum(step >= m * total for m in cfg.step_milestones)
    return cfg.lr


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


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay, cfg.no_decay_bn_bias, cfg.no_decay_depthwise)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    if cfg.optimizer == "rmsprop":  # TF-style RMSProp of the MobileNet papers
        return torch.optim.RMSprop(groups, lr=cfg.lr, alpha=0.9, eps=0.0316, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=cfg.lr)


class EMA:
    """Exponential moving average of weights (float buffers averaged too), with timm's warm-up."""

    def __init__(self, model: nn.Module, decay: float):
        self.module = copy.deepcopy(unwrap(model)).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        src = unwrap(model)
        torch._foreach_lerp_(list(self.module.parameters()), list(src.parameters()), 1 - d)
        for e, m in zip(self.module.buffers(), src.buffers(), strict=True):
            if e.is_floating_point():
                e.lerp_(m, 1 - d)
            else:
                e.copy_(m)


class Reporter:
    """Where the engine reports progress; the CLI swaps in rich progress bars."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled

    def log(self, message: str) -> None:
        if self.enabled:
            print(message, file=sys.stderr, flush=True)

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        pass

    def step(self, images: int, loss: float) -> None:
        pass

    def epoch_end(self, row: dict) -> None:
        val = (f"val top-1 {row['val_top1']:.2f}%  top-5 {row['val_top5']:.2f}%" if row["val_top1"] is not None
               else "not validated")
        self.log(f"epoch {row['epoch']}/{row['epochs']}: loss {row['train_loss']:.4f}  {val}  "
                 f"{row['images_per_s']:.0f} img/s  {row['epoch_time_s']:.0f}s")

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------------------------ batches

def _gen(*key: int) -> torch.Generator:
    seed = 0
    for k in key:
        seed = (seed * 1_000_003 + int(k)) % (2**61 - 1)
    return torch.Generator().manual_seed(seed)


FLIPS = ("none", "random", "alternate")


def alternate_flips(n: int, seed: int, epoch: int) -> torch.Tensor:
    """Which of ``n`` images are mirrored in ``epoch`` (1-based) under alternating flips: a seeded
    random half in odd epochs, the other half in even ones, so that each image is seen both ways
    every two epochs (the derandomised flip of Jordan 2024, "94% on CIFAR-10 in 3.29 seconds")."""
    return (torch.rand(n, generator=_gen(seed, 23)) < 0.5) ^ (epoch % 2 == 0)


class _Mirrored(torch.utils.data.Dataset):
    """A lazy folder dataset whose items at ``flips`` come mirrored."""

    def __init__(self, data, flips: torch.Tensor):
        self.data, self.flips = data, flips

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        x, *rest = self.data[i]
        return (x.flip(-1) if x is not None and self.flips[i] else x, *rest)


def train_batches(data, cfg: TrainConfig, epoch: int, ctx: D.Context):
    """(uint8 images, labels, unreadable files) of one epoch, shuffled by (seed, epoch), this rank's share.

    With ``cfg.flip == "alternate"`` the images come mirrored as ``alternate_flips`` says; random
    flips happen later, in ``augment``."""
    perm = torch.randperm(len(data), generator=_gen(cfg.seed, epoch, 17))
    perm = D.shard(perm, ctx, pad=True)
    flips = alternate_flips(len(data), cfg.seed, epoch) if cfg.flip == "alternate" else None
    bs = cfg.batch_size
    steps = max(len(perm) // bs, 1)   # drop the last partial batch (stable BN, a fixed step count)
    if isinstance(data, ImageTensors):
        for i in range(steps):
            index = perm[i * bs:(i + 1) * bs]
            x, y = data.batch(index)
            if flips is not None:
                x = mirror(x, flips[index])
            yield x, y, []
        return
    loader = torch.utils.data.DataLoader(data if flips is None else _Mirrored(data, flips), batch_size=bs,
                                         sampler=perm[: steps * bs].tolist(), num_workers=cfg.workers,
                                         collate_fn=collate_skip, drop_last=True,
                                         generator=_gen(cfg.seed, epoch, 29), persistent_workers=False)
    yield from loader


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
    the memory of a small one. BatchNorm then normalises over each part, as it would with that many
    images per GPU. It is no faster on a CPU: 2 x 1-thread DDP processes, V3-Small with the seed's
    stem, batch 64 each, compiled: 216, 203 and 217 images/s in parts of 64, 32 and 16 (one sitting).
    A loss that is not finite returns at once, without a step.
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


def steps_per_epoch(n: int, cfg: TrainConfig, ctx: D.Context) -> int:
    per_rank = -(-n // ctx.world_size)
    return max(per_rank // cfg.batch_size, 1)


def _eval_batches(data, batch_size: int, ctx: D.Context, workers: int = 2):
    index = D.shard(torch.arange(len(data)), ctx, pad=False)
    if isinstance(data, ImageTensors):
        for i in range(0, len(index), batch_size):
            x, y = data.batch(index[i:i + batch_size])
            yield x, y, []
        return
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, sampler=index.tolist(), num_workers=workers,
                                         collate_fn=collate_skip)
    yield from loader


# Test-time augmentation: the mean logits over each shifted view (1 px, reflect-padded) and its mirror.
TTA_SHIFTS = {"none": [(0, 0)], "mirror": [(0, 0)], "mirror-shift": [(0, 0), (1, 1), (-1, -1)]}


def tta_views(mode: str) -> int:
    """How many forward passes ``mode`` costs per image."""
    return 1 if mode == "none" else 2 * len(TTA_SHIFTS[mode])


def tta_mode(tta: bool | str) -> str:
    """``True``/``False`` (the earlier flag) as a mode name; a bad name is a UsageError."""
    mode = {True: "mirror", False: "none"}.get(tta, tta) if isinstance(tta, bool) else tta
    if mode not in TTA_SHIFTS:
        raise UsageError(f"tta must be {', '.join(TTA_SHIFTS)}: {tta!r}")
    return mode


def tta_logits(model: nn.Module, xb: torch.Tensor, mode: str, first: torch.Tensor | None = None) -> torch.Tensor:
    """Mean float logits of ``model`` over the views of ``mode`` (``first``: the plain view's, if known)."""
    if mode == "none":
        return model(xb).float() if first is None else first
    total = 0
    for dy, dx in TTA_SHIFTS[mode]:
        v = xb
        if (dy, dx) != (0, 0):
            h, w = xb.shape[-2:]
            v = F.pad(xb, (1, 1, 1, 1), mode="reflect")[..., 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
        plain = first if first is not None and (dy, dx) == (0, 0) else model(v).float()
        total = total + plain + model(v.flip(3)).float()
    return total / tta_views(mode)


@torch.no_grad()
def evaluate(model: nn.Module, data: ImageTensors | LazyImageFolder, pre: Preprocessing, *, batch_size: int = 100,
             device: torch.device | str = "cpu", channels_last: bool = False, ctx: D.Context | None = None,
             label_map: torch.Tensor | None = None, workers: int = 2, tta: bool | str = "none") -> dict:
    """Top-1, top-5 (percent) and mean cross-entropy of ``model`` on ``data`` (summed over ranks).

    ``tta``: "mirror" scores the mean logits of each image and its horizontal mirror,
    "mirror-shift" also those of the image shifted by one pixel both ways (6 views; ``True`` means
    "mirror"); ``top1_single`` then reports the single-view top-1 from the same pass.
    """
    tta = tta_mode(tta)
    ctx = ctx or D.Context(device=torch.device(device))
    was_training = model.training
    model.eval()
    loss_sum = correct1 = correct5 = single1 = count = 0.0
    skipped: list[tuple[str, str]] = []
    for x, y, bad in _eval_batches(data, batch_size, ctx, workers):
        skipped += bad
        if len(y) == 0:
            continue
        if label_map is not None:
            y = label_map[y]
        xb = normalize(x, pre, channels_last, ctx.device)
        logits = model(xb).float()
        y = y.to(logits.device)
        if tta != "none":
            single1 += (logits.argmax(1) == y).sum().item()
            logits = tta_logits(model, xb, tta, first=logits)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top == y[:, None]
        correct1 += hits[:, 0].sum().item()
        correct5 += hits.any(dim=1).sum().item()
        count += len(y)
    model.train(was_training)
    loss_sum, correct1, correct5, single1, count = D.all_reduce_sum(
        [loss_sum, correct1, correct5, single1, count], ctx)
    if count == 0:
        raise UsageError("the validation set has no readable images")
    out = {"top1": 100 * correct1 / count, "top5": 100 * correct5 / count, "loss": loss_sum / count,
           "images": int(count), "skipped": skipped}
    if tta != "none":
        out["top1_single"] = 100 * single1 / count
    return out


# ------------------------------------------------------------------------------------------- model

def zero_init_residual(model: nn.Module) -> int:
    """Set the scale of the last BatchNorm of every residual branch to 0, so that each residual block
    starts as the identity (Goyal et al. 2017); returns how many blocks."""
    count = 0
    for block in model.modules():
        if getattr(block, "residual_channels", 0):
            norms = [m for m in block.modules() if isinstance(m, nn.BatchNorm2d)]
            nn.init.zeros_(norms[-1].weight)
            count += 1
    return count


def build_model(cfg: TrainConfig, splits: DataSplits, reporter: Reporter) -> nn.Module:
    from ..models.registry import model_config
    from ..weights import create_model

    n = len(splits.class_names)
    res = splits.preprocessing.resolution
    if cfg.weights and Path(cfg.weights).is_file():
        try:
            model, _ = load_checkpoint(cfg.weights)
        except UsageError:
            from ..weights.io import from_weights, read_weights
            tensors, md = read_weights(cfg.weights)
            head = tensors.get("classifier.weight")
            base = model_config(cfg.model, cfg.width, res, cifar_stem=cfg.cifar_stem, dropout=cfg.dropout,
                                num_classes=int(head.shape[0]) if head is not None else 1000)
            model = from_weights(tensors, md, what=cfg.weights, config=base)
        reporter.log(f"loaded {cfg.weights} ({model.config.family}, width {model.config.width:g})")
    elif cfg.weights:  # a weight source tag, e.g. "torchvision" or "timm.in1k"
        model = create_model(cfg.model, pretrained=cfg.weights, width=cfg.width, resolution=res,
                             cifar_stem=cfg.cifar_stem, dropout=cfg.dropout)
        reporter.log(f"loaded {cfg.model} weights from {cfg.weights}")
    else:
        model = create_model(cfg.model, width=cfg.width, num_classes=n, resolution=res, cifar_stem=cfg.cifar_stem,
                             dropout=cfg.dropout)
        if cfg.zero_init_residual:
            reporter.log(f"zero-initialised the last BN of {zero_init_residual(model)} residual branches")
        return model
    model.train()
    if model.config.num_classes != n:
        reporter.log(f"classifier re-initialised for {n} classes (the checkpoint had {model.config.num_classes}); "
                     f"all other layers loaded")
        model.reset_classifier(n)
    model.config = model.config.replace(resolution=res)
    return model


# ----------------------------------------------------------------------------------------- run dir

def new_run_dir(cfg: TrainConfig) -> Path:
    if cfg.output:
        return Path(cfg.output)
    base = Path("runs") / "train"
    for i in range(1, 10_000):
        path = base / (cfg.model if i == 1 else f"{cfg.model}{i}")
        if not path.exists():
            return path
    raise UsageError(f"too many runs in {base}")


METRIC_FIELDS = ["epoch", "epochs", "lr", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5",
                 "images_per_s", "epoch_time_s", "elapsed_s"]


def write_metrics(run_dir: Path, history: list[dict]) -> None:
    from ..core.files import atomic_write
    atomic_write(run_dir / "metrics.json", json.dumps(history, indent=1).encode())
    lines = [",".join(METRIC_FIELDS)] + [",".join(_fmt(r[k]) for k in METRIC_FIELDS) for r in history]
    atomic_write(run_dir / "metrics.csv", ("\n".join(lines) + "\n").encode())


def _fmt(v) -> str:
    return f"{v:.6g}" if isinstance(v, float) else "" if v is None else str(v)


def plot_curves(run_dir: Path, history: list[dict]) -> None:
    """``curves.png``: train/val loss and val top-1 per epoch."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ep = [r["epoch"] for r in history]
    val = [r for r in history if r["val_top1"] is not None]  # --val-every N skips some epochs
    vep = [r["epoch"] for r in val]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(ep, [r["train_loss"] for r in history], label="train")
    a.plot(vep, [r["val_loss"] for r in val], "o-", label="val", markersize=3)
    a.set_xlabel("epoch")
    a.set_ylabel("loss")
    a.legend()
    b.plot(ep, [r["train_top1"] for r in history], label="train top-1 (augmented)")
    b.plot(vep, [r["val_top1"] for r in val], "o-", label="val top-1", markersize=3)
    b.plot(vep, [r["val_top5"] for r in val], "o-", label="val top-5", alpha=0.5, markersize=3)
    b.set_xlabel("epoch")
    b.set_ylabel("accuracy %")
    b.legend()
    fig.tight_layout()
    with atomic_path(run_dir / "curves.png") as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)


# --------------------------------------------------------------------------------------------- fit

@dataclass
class RunResult:
    run_dir: Path
    best_top1: float
    best_epoch: int
    last: dict
    history: list[dict]
    skipped: list[dict] = field(default_factory=list)
    wall_time_s: float = 0.0
    stopped: str | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["run_dir"] = str(self.run_dir)
        return d


def read_run_config(run_dir: str | Path) -> tuple[TrainConfig, dict]:
    """A run directory's ``config.json``: its config and what was resolved at the start (``resolved``)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise UsageError(f"{run_dir} is not a run directory (no config.json)")
    try:
        d = json.loads(path.read_text())
        cfg = TrainConfig.from_dict(d)
        _validate(cfg)
        return cfg, dict(d.get("resolved", {}))
    except (ValueError, TypeError, AttributeError) as exc:
        raise UsageError(f"{path} is not a readable run config: {' '.join(str(exc).split())[:200]}") from None


def fit(cfg: TrainConfig | None = None, *, resume: str | Path | None = None, reporter: Reporter | None = None,
        **overrides) -> RunResult:
    """Train ``cfg`` (or ``resolve_config(**overrides)``), validating and checkpointing every epoch.

    ``resume``: a run directory; its ``config.json`` and ``state.pt`` are loaded and training
    continues after the last finished epoch.
    """
    t0 = time.perf_counter()
    saved: dict = {}
    if resume is not None:
        cfg, saved = read_run_config(resume)
    elif cfg is None:
        cfg = resolve_config(**overrides)
    ctx = D.setup(cfg.device)
    reporter = reporter or Reporter()
    if not ctx.is_main:
        reporter = Reporter(enabled=False)
    try:
        return _fit(cfg, ctx, reporter, resume, t0, saved)
    finally:
        reporter.close()
        D.teardown(ctx)


def cxx_compiler() -> str | None:
    """The C++ compiler ``torch.compile`` would build CPU kernels with, found by Inductor's own search
    (``torch._inductor.config.cpp.cxx``: ``$CXX`` or g++), or None."""
    from torch._inductor import exc
    from torch._inductor.cpp_builder import get_cpp_compiler
    try:
        return get_cpp_compiler()
    except exc.InvalidCxxCompiler:
        return None


def _fit(cfg: TrainConfig, ctx: D.Context, reporter: Reporter, resume, t0: float,
         saved: dict) -> RunResult:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.compile and ctx.device.type == "cpu" and not cxx_compiler():
        raise UsageError("--compile on a CPU needs a C++ compiler (Inductor builds its kernels with one): "
                         "install g++ or set CXX, or pass --no-compile")
    kept = cfg.keep_memory and ctx.device.type == "cpu" and keep_freed_memory()
    torch.manual_seed(cfg.seed)
    run_dir = Path(resume) if resume is not None else new_run_dir(cfg)
    splits = load_data(cfg.data, resolution=cfg.resolution, preset=cfg.preset, val_size=cfg.val_size, seed=cfg.seed,
                       strict=cfg.strict, download=cfg.download and ctx.is_main)
    pre = splits.preprocessing
    if len(splits.train) < cfg.batch_size * ctx.world_size:
        reporter.log(f"note: {len(splits.train)} training images, fewer than one batch of {cfg.batch_size} "
                     f"per process: one smaller step per epoch")
    model = build_model(cfg, splits, reporter).to(ctx.device)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    bf16 = use_bf16(cfg, ctx.device)
    fast_dw = fastdw.enable(model) if cfg.fast_depthwise and ctx.device.type == "cpu" and not bf16 else 0
    bf16_pw = 0  # with whole-model autocast (bf16) the 1x1 convolutions are bf16 already
    if cfg.bf16_pointwise and not bf16:
        if bf16_supported(ctx.device):
            bf16_pw = mixed.enable(model)
        else:
            reporter.log(f"note: no bf16 on this {ctx.device.type}: the 1x1 convolutions stay fp32")
    optimizer = make_optimizer(model, cfg)
    ema = EMA(model, cfg.ema_decay) if cfg.ema_decay else None
    aug = AugmentConfig(cfg.pad_crop, cfg.flip == "random", cfg.cutout, cfg.policy)
    spe = steps_per_epoch(len(splits.train), cfg, ctx)
    meta = CheckpointMeta(cfg.model, model.config, pre, list(splits.class_names), {})
    model.checkpoint_meta = meta

    start_epoch, step, history, best, best_epoch, elapsed_before = 1, 0, [], -1.0, 0, 0.0
    val_s, costs = 0.0, {}  # a validation's duration, a training epoch's at each input size (time budget)
    epochs_limit = cfg.epochs  # a time budget picks the epochs up to this (and re-fits them early on)
    if resume is not None:
        state = load_state(run_dir)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            ema.module.load_state_dict(state["ema"])
        start_epoch, step = int(state["epoch"]) + 1, int(state["step"])
        history, best, best_epoch = list(state["history"]), float(state["best"]), int(state["best_epoch"])
        elapsed_before = float(state["elapsed_s"])
        epochs_limit = int(saved.get("epochs_limit", cfg.epochs))  # the budget may grow the plan up to it
        set_rng_state(state["rng"])
        if ctx.is_main:
            write_metrics(run_dir, history)  # a kill may have landed between the state and the metrics
        reporter.log(f"resuming {run_dir} after epoch {start_epoch - 1} of {cfg.epochs}")
    else:
        if ctx.is_main:
            if (run_dir / "state.pt").exists():
                raise UsageError(f"{run_dir} already holds a run; resume it with --resume {run_dir} "
                                 f"or choose another --output")
            run_dir.mkdir(parents=True, exist_ok=True)
        if cfg.time_budget_min:
            costs, val_s = _budget_probe(cfg, model, splits, pre, aug, bf16, ctx, spe)
            epochs = max(1, epochs_that_fit(0, time.perf_counter() - t0, _epoch_cost(costs, cfg, pre), val_s,
                                            cfg.val_every, cfg.time_budget_min * 60, cfg.epochs))
            epochs = D.broadcast_object(epochs, ctx)
            per_size = ", ".join(f"{k} px {v:.0f} s" for k, v in sorted(costs.items()))
            reporter.log(f"time budget {cfg.time_budget_min:g} min: {epochs} epochs (upper limit {cfg.epochs}; "
                         f"estimated epoch: {per_size}, validation {val_s:.0f} s)")
            cfg = TrainConfig.from_dict({**cfg.to_dict(), "epochs": epochs})
    record = {"preprocessing": pre.to_dict(), "class_names": splits.class_names, "data": splits.info, "bf16": bf16,
              "epochs_limit": epochs_limit, "fast_depthwise_layers": fast_dw, "bf16_pointwise_layers": bf16_pw,
              "keep_memory": kept, "world_size": ctx.world_size,
              "threads": torch.get_num_threads(), "model_config": model.config.to_dict()}
    if resume is None and ctx.is_main:
        _write_config(run_dir, cfg, record)
    D.barrier(ctx)

    # The first step compiles (a minute or two on a CPU); eval and the EMA stay eager.
    net = D.wrap(model, ctx, cfg.compile)
    total = cfg.epochs * spe
    deadline = cfg.time_budget_min * 60 if cfg.time_budget_min else None
    stopped = None
    planned = cfg.epochs  # the epochs after the early re-fits; a run with fewer was cut short
    measured: list[tuple[int, float]] = []  # (epoch, training seconds) of the last epochs, for the budget
    skipped: dict[str, str] = {}
    precision = "bf16" if bf16 else f"bf16 in {bf16_pw} 1x1 convs" if bf16_pw else "fp32"
    reporter.log(f"training {cfg.model} on {splits.info.get('data')}: {len(splits.train)} train / "
                 f"{len(splits.val)} val images, {len(splits.class_names)} classes, {cfg.epochs} epochs of {spe} "
                 f"steps, recipe {cfg.recipe}, {precision}, "
                 f"{'channels-last' if cfg.channels_last else 'NCHW'}, {torch.get_num_threads()} threads, "
                 f"{fast_dw} fast depthwise layers, {'compiled, ' if cfg.compile else ''}"
                 f"{'freed memory kept, ' if kept else ''}"
                 f"{ctx.world_size} process(es) -> {run_dir}")
    epoch = start_epoch - 1
    while epoch < cfg.epochs:  # not a range: a time budget may re-fit cfg.epochs after the first epochs
        epoch += 1
        net.train()
        te = time.perf_counter()
        g = _gen(cfg.seed, epoch, ctx.rank, 101)
        size = train_resolution(epoch, cfg.epochs, pre.resolution, cfg.resize_from, cfg.resize_until)
        reporter.epoch_start(epoch, cfg.epochs, spe)
        loss_sum = correct = seen = 0.0
        for x, y, bad in train_batches(splits.train, cfg, epoch, ctx):
            for p, r in bad:
                skipped.setdefault(p, r)
            if len(y) == 0:
                continue
            lr = lr_at(step, total, spe, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            y = y.to(ctx.device, non_blocking=True)
            logits, loss = train_step(net, optimizer, train_inputs(x, aug, pre, g, cfg, ctx.device, size), y, cfg,
                                      bf16)
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"loss is {loss.item()} at epoch {epoch}, step {step}: training stopped; "
                                       f"the last good checkpoint in {run_dir} is kept (lower --lr?)")
            step += 1
            if ema is not None:
                ema.update(model, step)
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
            reporter.step(len(y) * ctx.world_size, loss.item())
        train_time = time.perf_counter() - te
        measured = (measured + [(epoch, train_time)])[-3:]
        loss_sum, correct, seen = D.all_reduce_sum([loss_sum, correct, seen], ctx)
        if deadline and epoch < cfg.epochs:
            # Re-fit the schedule to the budget from the measured epoch times: after epochs 1-3 of a
            # fresh run either way (this early, stretching or shrinking it moves the LR by <1%). Later,
            # shorter when the rest no longer fits at the median pace of the last 3 epochs (the machine
            # slowed down), longer when more epochs fit even at the slowest of them (it sped up again):
            # the gap between the two keeps the plan from flapping, and the run always ends on the
            # schedule's last, smallest-LR epoch, validated. If not even one more epoch fits at this
            # epoch's pace, this one is the last.
            early = epoch <= 3 and resume is None
            now = elapsed_before + time.perf_counter() - t0 + val_s
            fits = epochs_that_fit(epoch, now, _measured_cost(costs, cfg, pre, measured), val_s, cfg.val_every,
                                   deadline, epochs_limit if early else cfg.epochs)
            if not early and fits == cfg.epochs:
                fits = epochs_that_fit(epoch, now, _measured_cost(costs, cfg, pre, measured, pick=max), val_s,
                                       cfg.val_every, deadline, epochs_limit)
                fits = max(fits, cfg.epochs)
            if epochs_that_fit(epoch, now, train_time + 2.0, val_s, cfg.val_every, deadline, epoch + 1) == epoch:
                fits = epoch
            fits = D.broadcast_object(fits, ctx)
            if fits != cfg.epochs:
                why = f"(epoch {epoch} took {train_time:.0f} s)"
                reporter.log(f"time budget: {fits} epochs instead of {cfg.epochs} {why}")
                if fits < planned and (not early or fits == epoch):
                    stopped = f"time budget: {fits} epochs instead of the {planned} planned {why}"
                elif fits >= planned:
                    stopped = None
                if early:
                    planned = fits
                cfg = TrainConfig.from_dict({**cfg.to_dict(), "epochs": fits})
                total = cfg.epochs * spe
                if ctx.is_main:
                    _write_config(run_dir, cfg, record)
        ev = {"loss": None, "top1": None, "top5": None, "top1_single": None}
        eval_model = ema.module if ema is not None else model
        if validates(epoch, cfg.epochs, cfg.val_every):
            tv = time.perf_counter()
            D.broadcast_buffers(eval_model, ctx)  # every rank validates with rank 0's BN statistics
            ev = evaluate(eval_model, splits.val, pre, batch_size=cfg.eval_batch_size, device=ctx.device,
                          channels_last=cfg.channels_last, ctx=ctx, workers=cfg.workers, tta=cfg.tta)
            val_s = time.perf_counter() - tv
            for p, r in ev.pop("skipped"):
                skipped.setdefault(p, r)
        elapsed = elapsed_before + time.perf_counter() - t0
        row = {"epoch": epoch, "epochs": cfg.epochs, "lr": lr_at(step - 1, total, spe, cfg),
               "train_loss": loss_sum / max(seen, 1), "train_top1": 100 * correct / max(seen, 1),
               "val_loss": ev["loss"], "val_top1": ev["top1"], "val_top5": ev["top5"],
               "images_per_s": seen / max(train_time, 1e-9), "epoch_time_s": time.perf_counter() - te,
               "elapsed_s": elapsed}
        if cfg.tta != "none":
            row["val_top1_single"] = ev["top1_single"]
        if cfg.resize_from:
            row["train_size"] = size
        history.append(row)
        is_best = ev["top1"] is not None and ev["top1"] > best
        if is_best:
            best, best_epoch = ev["top1"], epoch
        if ctx.is_main:
            extra = {"epoch": epoch, "val_top1": None if ev["top1"] is None else round(ev["top1"], 3),
                     "tta": cfg.tta, "recipe": cfg.recipe,
                     "data": cfg.data, "val_size": splits.info.get("val_size"),
                     "split_seed": splits.info.get("split_seed")}
            eval_model.checkpoint_meta = meta
            save_checkpoint(run_dir / "last.safetensors", eval_model, preprocessing=pre,
                            class_names=list(splits.class_names), variant=cfg.model, extra=extra)
            if is_best:
                save_checkpoint(run_dir / "best.safetensors", eval_model, preprocessing=pre,
                                class_names=list(splits.class_names), variant=cfg.model, extra=extra)
            # Checkpoints, then the run state, then the metrics: a kill before the state replays this
            # epoch (rewriting the same checkpoints); a kill after it loses only metrics, which
            # --resume rewrites from the state.
            save_state(run_dir, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                 "ema": ema.module.state_dict() if ema is not None else None,
                                 "epoch": epoch, "step": step, "history": history, "best": best,
                                 "best_epoch": best_epoch, "elapsed_s": elapsed, "rng": rng_state()})
            write_metrics(run_dir, history)
            try:
                plot_curves(run_dir, history)
            except Exception as exc:  # noqa: BLE001  (a plot must never stop training)
                reporter.log(f"note: could not plot curves: {exc}")
        reporter.epoch_end(row)
        D.barrier(ctx)

    wall = elapsed_before + time.perf_counter() - t0
    skipped_list = [{"path": p, "reason": r} for p, r in sorted(
        {**{s.path: s.reason for s in splits.skipped}, **skipped}.items())]
    result = RunResult(run_dir, best, best_epoch, history[-1] if history else {}, history, skipped_list, wall,
                       stopped)
    if ctx.is_main:
        from ..core.files import atomic_write
        summary = {k: v for k, v in result.to_dict().items() if k != "history"}
        summary["skipped_count"] = len(skipped_list)
        atomic_write(run_dir / "summary.json", json.dumps(summary, indent=1).encode())
    return result


def validates(epoch: int, epochs: int, every: int) -> bool:
    """Whether ``epoch`` (1-based) of ``epochs`` is validated: the first, every ``every``-th and the last."""
    return epoch == 1 or epoch % every == 0 or epoch == epochs


def epochs_that_fit(done: int, elapsed: float, train_s: float | Callable[[int, int], float], val_s: float,
                    every: int, deadline: float, limit: int) -> int:
    """The most epochs (``done`` <= n <= ``limit``) that end before ``deadline`` (30 s and 2% spare),
    if epoch e of n trains in ``train_s(e, n)`` seconds (or a constant) and a validation takes ``val_s``."""
    cost = train_s if callable(train_s) else (lambda e, n: train_s)
    n = done
    for total in range(done + 1, limit + 1):
        need = sum(cost(e, total) * 1.02 + val_s * validates(e, total, every) for e in range(done + 1, total + 1))
        if elapsed + need + 30 > deadline:
            break
        n = total
    return n


def _epoch_cost(costs: dict[int, float], cfg: TrainConfig, pre: Preprocessing) -> Callable[[int, int], float]:
    """Seconds to train epoch e of n, from the probe's seconds per epoch at the smallest and the full
    input size (linear in the pixel count in between)."""
    lo, hi = min(costs), max(costs)

    def cost(e: int, n: int) -> float:
        r = train_resolution(e, n, pre.resolution, cfg.resize_from, cfg.resize_until)
        t = (r * r - lo * lo) / (hi * hi - lo * lo) if hi > lo else 1.0
        return costs[lo] + t * (costs[hi] - costs[lo])
    return cost


def _measured_cost(costs: dict[int, float], cfg: TrainConfig, pre: Preprocessing,
                   measured: list[tuple[int, float]], pick: Callable = statistics.median
                   ) -> Callable[[int, int], float]:
    """Seconds to train epoch e of n from now on: the start-up probe's estimates scaled by the ratio
    of measured to estimated time over ``measured`` ((epoch, seconds) of the last epochs), the median
    one (so that one slow epoch does not shorten the schedule for good) or as ``pick`` says; the
    measured time itself when there was no probe (as after ``--resume``)."""
    if not costs:
        seconds = pick(t for _, t in measured) + 2.0
        return lambda e, n: seconds
    est = _epoch_cost(costs, cfg, pre)
    scale = pick((t + 2.0) / est(e, cfg.epochs) for e, t in measured)
    return lambda e, n: scale * est(e, n)


def _write_config(run_dir: Path, cfg: TrainConfig, resolved: dict) -> None:
    atomic_write(run_dir / "config.json", json.dumps({**cfg.to_dict(), "resolved": resolved}, indent=1).encode())


def _budget_probe(cfg: TrainConfig, model: nn.Module, splits: DataSplits, pre: Preprocessing, aug: AugmentConfig,
                  bf16: bool, ctx: D.Context, spe: int) -> tuple[dict[int, float], float]:
    """Seconds per training epoch at each input size the run uses, and per validation; timed on a
    copy of the model (the real run's state is untouched)."""
    full = pre.resolution
    sizes = {full, train_resolution(1, 1, full, cfg.resize_from, cfg.resize_until)}  # the others: interpolated
    costs = {}
    with torch.random.fork_rng(devices=[]):
        probe = copy.deepcopy(model).train()
        opt = make_optimizer(probe, cfg)
        g = torch.Generator().manual_seed(0)
        for size in sorted(sizes):
            times = []
            for i, (x, y, _) in enumerate(train_batches(splits.train, cfg, 0, ctx)):
                if i >= 12:
                    break
                ts = time.perf_counter()
                train_step(probe, opt, train_inputs(x, aug, pre, g, cfg, ctx.device, size), y.to(ctx.device), cfg, bf16)
                times.append(time.perf_counter() - ts)
            step_s = sorted(times[2:] or times)[len(times[2:] or times) // 2]
            ema_s = 0.03 * step_s if cfg.ema_decay else 0.0
            costs[size] = spe * (step_s + ema_s) * 1.08 + 2.0  # + checkpoints and plot
        probe.eval()
        x, _, _ = next(_eval_batches(splits.val, cfg.eval_batch_size, ctx))
        ts = time.perf_counter()
        with torch.no_grad():
            probe(normalize(x, pre, cfg.channels_last, ctx.device))
        eval_s = (time.perf_counter() - ts) * tta_views(cfg.tta) * len(splits.val) / max(len(x), 1) / ctx.world_size
        del probe, opt
    return costs, eval_s


# ---------------------------------------------------------------------------------------- evaluate

def evaluate_checkpoint(weights: str | Path, data: str, *, model: str | None = None, batch_size: int = 100,
                        device: str = "auto", strict: bool = False, download: bool = True,
                        channels_last: bool = False, val_size: int | float | None = None,
                        seed: int | None = None, tta: bool | str = "none") -> dict:
    """Top-1/top-5/loss of a checkpoint on ``data``'s validation split, preprocessed as the checkpoint says.

    A folder without ``val/``: the images training held out (``val_size``/``seed``, by default as
    recorded in the checkpoint), or all of ``train/`` when the checkpoint records no split.
    """
    tta = tta_mode(tta)
    ctx = D.Context(device=resolve_device(device))
    if not Path(weights).is_file():
        raise UsageError(f"no such checkpoint: {weights}")
    try:
        net, meta = load_checkpoint(weights, device=ctx.device)
    except UsageError:
        if model is None:
            raise
        from ..models.registry import model_config
        from ..weights.io import from_weights, read_weights
        tensors, md = read_weights(weights)
        head = tensors.get("classifier.weight")
        net = from_weights(tensors, md, what=str(weights), config=model_config(
            model, num_classes=int(head.shape[0]) if head is not None else 1000)).to(ctx.device)
        meta = net.checkpoint_meta
    if model is not None and meta.variant and not _same_model(model, meta.variant, net.config.family):
        raise UsageError(f"{weights} holds {meta.variant}, not {model}")
    pre = meta.preprocessing
    if pre is None:
        from ..core.preprocessing import cifar, imagenet
        pre = (cifar if net.config.cifar_stem else imagenet)(net.config.resolution)
    names = meta.class_names
    val_size = val_size if val_size is not None else meta.extra.get("val_size")
    seed = seed if seed is not None else meta.extra.get("split_seed") or 0
    splits = load_data(data, resolution=pre.resolution, preset=pre.kind, strict=strict, download=download,
                       class_names=names, train=False, num_classes=net.config.num_classes, val_size=val_size,
                       seed=seed)
    if isinstance(splits.val, LazyImageFolder):
        splits.val.pre = pre  # the checkpoint's crop and interpolation, not the data's defaults
    label_map = None
    if names is not None and list(splits.class_names) != list(names):
        missing = [c for c in splits.class_names if c not in names]
        if missing:
            raise UsageError(f"the data has classes the checkpoint does not know: {', '.join(missing[:5])}")
        label_map = torch.tensor([names.index(c) for c in splits.class_names])
    elif names is None and len(splits.class_names) > net.config.num_classes:
        raise UsageError(f"the data has {len(splits.class_names)} classes, the model {net.config.num_classes}")
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    res = evaluate(net, splits.val, pre, batch_size=batch_size, device=ctx.device, channels_last=channels_last,
                   ctx=ctx, label_map=label_map, tta=tta)
    skipped = [{"path": p, "reason": r} for p, r in res.pop("skipped")]
    skipped += [{"path": s.path, "reason": s.reason} for s in splits.skipped]
    return {**res, "weights": str(weights), "data": str(data), "split": splits.info.get("val"),
            "preprocessing": pre.to_dict(), "skipped": skipped}


def _same_model(name: str, variant: str, family: str) -> bool:
    from ..models.registry import get_variant
    try:
        return get_variant(name).family == family or name == variant
    except UsageError:
        return False
