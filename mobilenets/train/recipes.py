"""Training recipes as data: named presets of ``TrainConfig`` fields, overridden by the user.

- ``baseline``: exactly the PyTorch MobileNetV3 seed's ``train.py`` (akrapukhin/MobileNetV3), to
  compare against: MobileNetV3-Small with its CIFAR stem (stride 1 in the first three stride-2
  layers), SGD lr 0.1 momentum 0.9 without weight decay, ``MultiStepLR`` milestones at epochs 15,
  20 and 30 with gamma 0.1 (stepped per epoch), 20 epochs of batch 128, RandomCrop(32, padding 4)
  and horizontal flips, CIFAR-100 mean/std, no label smoothing, no EMA, NCHW fp32.
- ``default``: a stronger general recipe: SGD Nesterov with warm-up then cosine decay, label
  smoothing, no weight decay on BN and biases, EMA of the weights, channels-last, fp32 (``--bf16
  on`` turns autocast on).
- ``cifar10_60min``: the best recipe found for 60 minutes of CIFAR-10 on 2 CPU cores, run as two
  single-thread processes under torchrun (batch 64 each): MobileNetV3-Large 0.5 with a stride-8
  stem (more depth at 32x32 and 16x16 than V3-Small, at a similar pace), one-cycle SGD to 0.2,
  label smoothing 0.1, EMA, the CPU speed-ups (fast depthwise gradients, bf16 1x1 convolutions,
  ``torch.compile``), validated every 8th epoch and the last with 6-view TTA, the epochs picked by
  a 59-minute time budget. Its runs and the variants tried are in
  ``benchmarks/results/cifar10_runs.md``; ``benchmarks/cifar10_recipe.py`` reproduces them.
"""
from __future__ import annotations

from ..core.errors import UsageError

RECIPES: dict[str, dict] = {
    "baseline": dict(
        model="mobilenet_v3_small", cifar_stem=3,
        epochs=20, batch_size=128, optimizer="sgd", lr=0.1, momentum=0.9, nesterov=False, weight_decay=0.0,
        no_decay_bn_bias=False, schedule="step", step_milestones=(15, 20, 30), step_gamma=0.1, warmup_epochs=0,
        label_smoothing=0.0, ema_decay=0.0, pad_crop=4, flip="random", cutout=0, policy=None, normalize="cifar100",
        channels_last=False, bf16=False, bf16_pointwise=False, compile=False,
    ),
    "default": dict(
        epochs=30, batch_size=128, optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
        no_decay_bn_bias=True, schedule="cosine", warmup_epochs=2, label_smoothing=0.1, ema_decay=0.999,
        pad_crop=4, flip="random", cutout=0, policy=None, channels_last=True, bf16=False,
    ),
    # For 2 shared CPU cores: run under torchrun as two processes of one thread each (see the docstring).
    "cifar10_60min": dict(
        model="mobilenet_v3_large", cifar_stem=2, width=0.5,
        epochs=60, batch_size=64, optimizer="sgd", lr=0.2, momentum=0.9, nesterov=True, weight_decay=5e-4,
        no_decay_bn_bias=True, schedule="onecycle", warmup_epochs=2, label_smoothing=0.1, ema_decay=0.998,
        pad_crop=4, flip="random", cutout=0, policy=None, channels_last=True, bf16=False, fast_depthwise=True,
        bf16_pointwise=True, compile=True, tta="mirror-shift", val_every=8, val_size=5000, time_budget_min=59.0,
    ),
}


def get_recipe(name: str) -> dict:
    try:
        return dict(RECIPES[name])
    except KeyError:
        raise UsageError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}") from None
