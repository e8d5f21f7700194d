"""The learning rate as a pure function of the step: warm-up, then one of the schedules.

No scheduler state exists, so a resumed run, the time-budget planner and QAT all ask the same
function and get the same answer.
"""
from __future__ import annotations

import math

SCHEDULES = ("step", "cosine", "onecycle", "linear", "constant")


def lr_at(step: int, total: int, *, lr: float, schedule: str = "cosine", warmup_steps: int = 0,
          milestones: tuple[float, ...] = (0.5, 0.75), gamma: float = 0.1, steps_per_epoch: int | None = None
          ) -> float:
    """The learning rate of ``step`` (0-based) out of ``total`` planned steps.

    The step schedule multiplies by ``gamma`` at each of ``milestones``: a value < 1 is a fraction
    of ``total``, a value >= 1 an epoch number, as torch's ``MultiStepLR`` stepped once per epoch
    counts them (milestone 15: from the 16th epoch on; needs ``steps_per_epoch``). ``onecycle``
    follows torch's OneCycleLR (lr/25 up to lr, cosine down to lr/25e4)."""
    warm = int(warmup_steps)
    if schedule == "onecycle":
        warm = max(warm, 1)
        lo, end = lr / 25, lr / 25e4
        if step < warm:
            return lo + (lr - lo) * step / warm
        t = (step - warm) / max(total - warm, 1)
        return end + (lr - end) * 0.5 * (1 + math.cos(math.pi * t))
    if step < warm:
        return lr * (step + 1) / warm
    t = (step - warm) / max(total - warm, 1)
    if schedule == "cosine":
        return lr * 0.5 * (1 + math.cos(math.pi * t))
    if schedule == "linear":
        return lr * (1 - t)
    if schedule == "step":
        return lr * gamma ** sum(step >= milestone_step(m, total, steps_per_epoch) for m in milestones)
    return lr


def milestone_step(milestone: float, total: int, steps_per_epoch: int | None) -> float:
    """The first step at which ``milestone`` (a fraction of ``total`` if < 1, else an epoch) has passed."""
    if milestone < 1:
        return milestone * total
    if steps_per_epoch is None:
        raise ValueError(f"milestone {milestone:g} is an epoch number: lr_at needs steps_per_epoch")
    return milestone * steps_per_epoch
