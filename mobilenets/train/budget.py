"""The time budget (``--time-budget-min``): how many epochs fit, planned at the start and re-planned
between epochs. A plug-in of the loop: the loop asks it after each epoch and it may answer another
number of epochs; the learning rate stays a pure function of (step, planned total steps).

The plan comes from steady-state epoch times. At the start a probe times a few training steps on
a copy of the model (its first steps left out); after each epoch the epoch's time is measured, less
the steps that compiled (``torch.compile`` compiles the first step at each new input size: minutes
on a CPU, once), so a first epoch that compiled does not shrink the plan.
"""
from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..core.preprocessing import Preprocessing
from ..data.datasets import DataSplits
from . import distributed as D
from .augment import AugmentConfig, normalize
from .batches import train_batches
from .config import TrainConfig
from .evaluation import eval_batches, tta_views, validates
from .step import build_optimizer, train_inputs, train_resolution, train_step

EpochCost = Callable[[int, int], float]  # seconds to train epoch e of n
OVERHEAD_S = 2.0  # per epoch beyond its steps: checkpoints, metrics, the plot


@dataclass
class EpochTime:
    """How long an epoch's training took: ``train_s`` in all over ``steps`` steps, of which
    ``warm_s`` in the ``warm_steps`` that compiled (the first step at each new input size)."""
    train_s: float
    steps: int
    warm_s: float = 0.0
    warm_steps: int = 0

    @property
    def steady_s(self) -> float:
        """The epoch's time had no step compiled: the warm steps counted at the other steps' pace."""
        rest = self.steps - self.warm_steps
        if self.warm_steps == 0 or rest <= 0:
            return self.train_s
        return (self.train_s - self.warm_s) * self.steps / rest


def epochs_that_fit(done: int, elapsed: float, train_s: float | EpochCost, val_s: float, every: int,
                    deadline: float, limit: int) -> int:
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


def epoch_cost(costs: dict[int, float], full: int, start: int, until: float) -> EpochCost:
    """Seconds to train epoch e of n from the probe's seconds per epoch at the smallest and the full
    input size (linear in the pixel count in between; progressive resizing from ``start`` px)."""
    lo, hi = min(costs), max(costs)

    def cost(e: int, n: int) -> float:
        r = train_resolution(e, n, full, start, until)
        t = (r * r - lo * lo) / (hi * hi - lo * lo) if hi > lo else 1.0
        return costs[lo] + t * (costs[hi] - costs[lo])
    return cost


class TimeBudget:
    """Plans the epochs of a run that must end within ``minutes``.

    ``cost``: the probe's estimate of epoch e of n (``None`` after ``--resume``: then the measured
    epochs alone count); ``limit``: the most epochs a plan may have; ``early_refits``: a fresh run
    re-fits the plan freely after each of its first 3 epochs (stretching or shrinking it that early
    moves the learning rate very little). Later the plan shrinks when the rest no longer fits at the
    median pace of the last 3 epochs (the machine slowed down) and grows when more epochs fit even at
    the slowest of them (it sped up again): the gap between the two keeps the plan from flapping, and
    the run always ends on the schedule's last, smallest-LR epoch. If not even one more epoch fits,
    the current one is the last.
    """

    def __init__(self, minutes: float, *, limit: int, every: int, cost: EpochCost | None = None,
                 val_s: float = 0.0, early_refits: bool = True, planned: int | None = None):
        self.deadline, self.limit, self.every = minutes * 60, limit, every
        self.cost, self.val_s, self.early_refits = cost, val_s, early_refits
        self.measured: list[tuple[int, float]] = []  # (epoch, steady-state seconds) of the last 3 epochs
        self.planned = planned  # the epochs after the early re-fits; a run with fewer was cut short
        self.stopped: str | None = None  # why the run ends before the plan, if it does

    def plan(self, elapsed: float) -> int:
        """The epochs of a fresh run that fit, ``elapsed`` seconds after its start."""
        self.planned = max(1, epochs_that_fit(0, elapsed, self.cost, self.val_s, self.every, self.deadline,
                                              self.limit))
        return self.planned

    def validated(self, seconds: float) -> None:
        """A validation took ``seconds``."""
        self.val_s = seconds

    def _pace(self, pick: Callable, epochs: int) -> EpochCost:
        """Seconds to train epoch e of n from now on: the probe's estimate scaled by the ratio of
        measured to estimated time over the last epochs (of ``epochs``; by ``pick``: the median, so
        that one slow epoch does not shorten the plan for good, or the max), or the measured time."""
        if self.cost is None:
            seconds = pick(t for _, t in self.measured) + OVERHEAD_S
            return lambda e, n: seconds
        cost = self.cost
        scale = pick((t + OVERHEAD_S) / cost(e, epochs) for e, t in self.measured)
        return lambda e, n: scale * cost(e, n)

    def after_epoch(self, epoch: int, epochs: int, elapsed: float, took: EpochTime) -> int:
        """The epochs to run in all, after ``epoch`` of ``epochs`` ended ``elapsed`` s into the run."""
        steady = took.steady_s
        self.measured = (self.measured + [(epoch, steady)])[-3:]
        if epoch >= epochs:
            return epochs
        early = self.early_refits and epoch <= 3
        now = elapsed + self.val_s
        fits = epochs_that_fit(epoch, now, self._pace(statistics.median, epochs), self.val_s, self.every, self.deadline,
                               self.limit if early else epochs)
        if not early and fits == epochs:
            fits = max(epochs, epochs_that_fit(epoch, now, self._pace(max, epochs), self.val_s, self.every,
                                               self.deadline, self.limit))
        if epochs_that_fit(epoch, now, steady + OVERHEAD_S, self.val_s, self.every, self.deadline, epoch + 1) == epoch:
            fits = epoch
        planned = self.planned if self.planned is not None else epochs
        if fits != epochs:
            if fits < planned and (not early or fits == epoch):
                self.stopped = f"time budget: {fits} epochs instead of the {planned} planned (epoch {epoch} took " \
                               f"{took.train_s:.0f} s)"
            elif fits >= planned:
                self.stopped = None
            if early:
                self.planned = fits
        return fits


def probe(cfg: TrainConfig, model: nn.Module, splits: DataSplits, pre: Preprocessing, aug: AugmentConfig,
          bf16: bool, ctx: D.Context, steps_per_epoch: int) -> tuple[dict[int, float], float]:
    """(seconds per training epoch at each input size the run starts and ends at, seconds per
    validation), from 12 steps per size on a copy of the model, its first 2 left out (they set up
    kernels); the run's own model and random state are untouched."""
    full = pre.resolution
    sizes = {full, train_resolution(1, 1, full, cfg.resize_from, cfg.resize_until)}
    costs = {}
    with torch.random.fork_rng(devices=[]):
        copy_ = copy.deepcopy(model).train()
        opt = build_optimizer(copy_, cfg)
        g = torch.Generator().manual_seed(0)
        for size in sorted(sizes):
            times = []
            batches = train_batches(splits.train, batch_size=cfg.batch_size, seed=cfg.seed, epoch=0, ctx=ctx,
                                    flip=cfg.flip, workers=cfg.workers)
            for i, (x, y, _) in enumerate(batches):
                if i >= 12:
                    break
                ts = time.perf_counter()
                train_step(copy_, opt, train_inputs(x, aug, pre, g, cfg, ctx.device, size), y.to(ctx.device), cfg,
                           bf16)
                times.append(time.perf_counter() - ts)
            steady = sorted(times[2:] or times)
            step_s = steady[len(steady) // 2]
            ema_s = 0.03 * step_s if cfg.ema_decay else 0.0
            costs[size] = steps_per_epoch * (step_s + ema_s) * 1.08 + OVERHEAD_S
        copy_.eval()
        x, _, _ = next(eval_batches(splits.val, cfg.eval_batch_size, ctx))
        ts = time.perf_counter()
        with torch.no_grad():
            copy_(normalize(x, pre, cfg.channels_last, ctx.device))
        val_s = (time.perf_counter() - ts) * tta_views(cfg.tta) * len(splits.val) / max(len(x), 1) / ctx.world_size
    return costs, val_s
