"""``fit``: build, then per epoch train, validate and checkpoint.

Determinism: every epoch's shuffle and augmentation come from generators seeded by (seed, epoch,
rank); the global RNG (dropout) is saved with the model, EMA, optimizer and step in one atomic
``state.pt`` per epoch. A resumed run therefore replays the epochs it missed and ends with the
same metrics as an uninterrupted one. The learning rate is a pure function of the step and the
planned total, so no scheduler state is needed; a time budget (``budget``) may re-plan the total
between epochs, never the configuration.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..core.preprocessing import STATS, Preprocessing
from ..data.datasets import DataSplits, LazyImageFolder, load_data
from ..models.meta import CheckpointMeta
from ..models.network import unwrap
from ..weights.io import save_checkpoint
from . import distributed as D
from .batches import seeded, steps_per_epoch, train_batches
from .budget import EpochTime, TimeBudget, epoch_cost, probe
from .checkpoint import load_state, rng_state, save_state, set_rng_state
from .config import TrainConfig, resolve_config, validate
from .evaluation import evaluate, validates
from .model import build_model, check_weights, weights_normalization
from .optim import EMA
from .qat import OBSERVE_FRACTION
from .report import Reporter
from .rundir import (
    RunResult,
    new_run_dir,
    plot_curves,
    read_run_config,
    write_config,
    write_metrics,
    write_summary,
)
from .speedups import Speedups, apply_speedups, check_speedups
from .step import augmentation, build_optimizer, learning_rate, train_inputs, train_resolution, train_step


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class Run:
    """A run in progress: what ``start`` built, the planned ``epochs``, and the state carried from
    epoch to epoch (``epoch`` ... ``elapsed_before``: what ``state.pt`` saves)."""
    cfg: TrainConfig
    ctx: D.Context
    reporter: Reporter
    run_dir: Path
    splits: DataSplits
    model: nn.Module
    fast: Speedups
    optimizer: torch.optim.Optimizer
    ema: EMA | None
    steps_per_epoch: int
    t0: float
    resumed: bool = False
    epochs: int = 0
    epoch: int = 0
    step: int = 0
    history: list[dict] = field(default_factory=list)
    best: float = -1.0
    best_epoch: int = 0
    elapsed_before: float = 0.0  # seconds of the run before this process (resumed runs)
    resolved: dict = field(default_factory=dict)  # what was decided at the start (config.json)
    skipped: dict[str, str] = field(default_factory=dict)
    shapes: set[tuple] = field(default_factory=set)  # input shapes the steps have run (and compiled) for

    @property
    def pre(self) -> Preprocessing:
        return self.splits.preprocessing

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.t0


def fit(cfg: TrainConfig | None = None, *, resume: str | Path | None = None, reporter: Reporter | None = None,
        **overrides) -> RunResult:
    """Train ``cfg`` (or ``resolve_config(**overrides)``), validating and checkpointing every epoch.

    ``resume``: a run directory; its ``config.json`` and ``state.pt`` are loaded and training
    continues after the last finished epoch. Bad input (an output path under a file, a taken run
    directory, a missing checkpoint, a device this machine lacks, ``--compile`` without a
    compiler) is refused before any data is read.
    """
    t0, saved = time.perf_counter(), {}
    if resume is not None:
        cfg, saved = read_run_config(resume)
    cfg = validate(cfg) if cfg is not None else resolve_config(**overrides)
    run_dir = Path(resume) if resume is not None else new_run_dir(cfg)
    check_weights(cfg)
    ctx = D.setup(cfg.device)
    reporter = (reporter or Reporter()) if ctx.is_main else Reporter(enabled=False)
    try:
        check_speedups(cfg, ctx.device)
        run = start(cfg, ctx, reporter, run_dir, t0, resume is not None)
        budget = plan(run, saved)
        while run.epoch < run.epochs:  # not a range: a time budget may re-plan the epochs between them
            run.epoch += 1
            if cfg.qat:  # float for --qat-delay epochs; the observers follow the activations, then freeze
                qat_net = unwrap(run.model)
                qat_net.fake_quantize(run.epoch > cfg.qat_delay)
                qat_net.observe(run.epoch <= max(math.ceil(OBSERVE_FRACTION * run.epochs), cfg.qat_delay + 1))
            took, row = train_one_epoch(run)
            if budget is not None:
                replan(run, budget, took)
            row.update(validate_epoch(run, budget))
            end_epoch(run, row)
        return finish(run, budget.stopped if budget is not None else None)
    finally:
        reporter.close()
        D.teardown(ctx)


def load_splits(cfg: TrainConfig, ctx: D.Context) -> DataSplits:
    """``cfg.data``, normalised as ``cfg.normalize`` says."""
    splits = load_data(cfg.data, resolution=cfg.resolution, preset=cfg.preset, val_size=cfg.val_size, seed=cfg.seed,
                       strict=cfg.strict, download=cfg.download and ctx.is_main)
    if cfg.train_images is not None and len(splits.train) > cfg.train_images:
        pick = torch.randperm(len(splits.train), generator=torch.Generator().manual_seed(cfg.seed))
        splits.train = splits.train.subset(pick[:cfg.train_images].sort().values)
    splits.info["train_images"] = len(splits.train)
    if cfg.normalize != "data":
        mean, std = weights_normalization(cfg) if cfg.normalize == "weights" else STATS[cfg.normalize]
        splits.preprocessing = dataclasses.replace(splits.preprocessing, mean=tuple(mean), std=tuple(std))
        for part in (splits.train, splits.val):
            if isinstance(part, LazyImageFolder):
                part.pre = splits.preprocessing
    return splits


def start(cfg: TrainConfig, ctx: D.Context, reporter: Reporter, run_dir: Path, t0: float, resumed: bool) -> Run:
    """Data, model, speed-ups, optimizer and EMA; the saved state of a ``resumed`` run."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    splits = load_splits(cfg, ctx)
    if len(splits.train) < cfg.batch_size * ctx.world_size:
        reporter.log(f"note: {len(splits.train)} training images, fewer than one batch of {cfg.batch_size} "
                     f"per process: one smaller step per epoch")
    pre = splits.preprocessing
    model = build_model(cfg, len(splits.class_names), pre.resolution, reporter).to(ctx.device)
    model.checkpoint_meta = CheckpointMeta(cfg.model, model.config, pre, list(splits.class_names), {})
    fast = apply_speedups(model, cfg, ctx, reporter)
    run = Run(cfg, ctx, reporter, run_dir, splits, model, fast, build_optimizer(model, cfg),
              EMA(model, cfg.ema_decay) if cfg.ema_decay else None,
              steps_per_epoch(len(splits.train), cfg.batch_size, ctx), t0, resumed, epochs=cfg.epochs)
    if not resumed:
        if ctx.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
        return run
    state = load_state(run_dir)
    model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    if run.ema is not None:
        run.ema.module.load_state_dict(state["ema"])
    run.epoch, run.step, run.history = int(state["epoch"]), int(state["step"]), list(state["history"])
    run.best, run.best_epoch, run.elapsed_before = float(state["best"]), int(state["best_epoch"]), float(
        state["elapsed_s"])
    set_rng_state(state["rng"])
    if ctx.is_main:
        write_metrics(run_dir, run.history)  # a kill may have landed between the state and the metrics
    reporter.log(f"resuming {run_dir} after epoch {run.epoch} of {cfg.epochs}")
    return run


def plan(run: Run, saved: dict) -> TimeBudget | None:
    """The epochs to run (picked by the time budget, if there is one) and the budget; a fresh run
    writes its ``config.json``. ``saved``: what a resumed run's ``config.json`` recorded."""
    cfg, ctx, s = run.cfg, run.ctx, run.splits
    limit = int(saved.get("epochs_limit", cfg.epochs))  # a budget plans (and re-plans) up to this
    run.resolved = {"preprocessing": s.preprocessing.to_dict(), "class_names": s.class_names, "data": s.info,
                    "epochs_limit": limit, **run.fast.record, "world_size": ctx.world_size,
                    "threads": torch.get_num_threads(), "model_config": run.model.config.to_dict()}
    budget = None
    if cfg.time_budget_min and run.resumed:  # resumed: the measured epochs alone re-plan
        budget = TimeBudget(cfg.time_budget_min, limit=limit, every=cfg.val_every, early_refits=False,
                            planned=cfg.epochs)
    elif cfg.time_budget_min:
        costs, val_s = probe(cfg, run.model, s, run.pre, augmentation(cfg), run.fast.bf16, ctx, run.steps_per_epoch)
        cost = epoch_cost(costs, run.pre.resolution, cfg.resize_from, cfg.resize_until)
        budget = TimeBudget(cfg.time_budget_min, limit=limit, every=cfg.val_every, cost=cost, val_s=val_s)
        run.epochs = D.broadcast_object(budget.plan(run.elapsed()), ctx)
        per_size = ", ".join(f"{k} px {v:.0f} s" for k, v in sorted(costs.items()))
        run.reporter.log(f"time budget {cfg.time_budget_min:g} min: {run.epochs} epochs (upper limit {limit}; "
                         f"estimated epoch: {per_size}, validation {val_s:.0f} s)")
    if not run.resumed and ctx.is_main:
        write_config(run.run_dir, cfg.replace(epochs=run.epochs), run.resolved)
    D.barrier(ctx)
    run.reporter.log(f"training {cfg.model} on {s.info.get('data')}: {len(s.train)} train / {len(s.val)} val "
                     f"images, {len(s.class_names)} classes, {run.epochs} epochs of {run.steps_per_epoch} steps, "
                     f"recipe {cfg.recipe}, {run.fast.describe()}, {torch.get_num_threads()} threads, "
                     f"{ctx.world_size} process(es) -> {run.run_dir}")
    return budget


def train_one_epoch(run: Run) -> tuple[EpochTime, dict]:
    """Train epoch ``run.epoch``: (how long it took, the start of its metrics row)."""
    cfg, ctx, epoch, spe = run.cfg, run.ctx, run.epoch, run.steps_per_epoch
    run.fast.net.train()
    started = time.perf_counter()
    g = seeded(cfg.seed, epoch, ctx.rank, 101)
    size = train_resolution(epoch, run.epochs, run.pre.resolution, cfg.resize_from, cfg.resize_until)
    aug, total = augmentation(cfg), run.epochs * spe
    run.reporter.epoch_start(epoch, run.epochs, spe)
    loss_sum = correct = seen = 0.0
    took = EpochTime(0.0, 0)
    for x, y, bad in train_batches(run.splits.train, batch_size=cfg.batch_size, seed=cfg.seed, epoch=epoch, ctx=ctx,
                                   flip=cfg.flip, workers=cfg.workers):
        for p, r in bad:
            run.skipped.setdefault(p, r)
        if len(y) == 0:
            continue
        for group in run.optimizer.param_groups:
            group["lr"] = learning_rate(cfg, run.step, total, spe)
        xb, y = train_inputs(x, aug, run.pre, g, cfg, ctx.device, size), y.to(ctx.device, non_blocking=True)
        ts = time.perf_counter()
        logits, loss = train_step(run.fast.net, run.optimizer, xb, y, cfg, run.fast.bf16)
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"loss is {loss.item()} at epoch {epoch}, step {run.step}: training stopped; "
                                   f"the last good checkpoint in {run.run_dir} is kept (lower --lr?)")
        if tuple(xb.shape) not in run.shapes:  # the first step at a shape sets up (compiles) its kernels
            run.shapes.add(tuple(xb.shape))
            took.warm_s, took.warm_steps = took.warm_s + time.perf_counter() - ts, took.warm_steps + 1
        run.step, took.steps = run.step + 1, took.steps + 1
        if run.ema is not None:
            run.ema.update(run.model, run.step)
        loss_sum += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
        run.reporter.step(len(y) * ctx.world_size, loss.item())
    took.train_s = time.perf_counter() - started
    loss_sum, correct, seen = D.all_reduce_sum([loss_sum, correct, seen], ctx)
    row = {"epoch": epoch, "train_loss": loss_sum / max(seen, 1), "train_top1": 100 * correct / max(seen, 1),
           "images_per_s": seen / max(took.train_s, 1e-9), "started": started}
    if cfg.resize_from:
        row["train_size"] = size
    return took, row


def replan(run: Run, budget: TimeBudget, took: EpochTime) -> None:
    """Ask the time budget for the epochs after this one; a new plan is logged and recorded."""
    fits = D.broadcast_object(budget.after_epoch(run.epoch, run.epochs, run.elapsed(), took), run.ctx)
    if fits == run.epochs:
        return
    steady = f", {took.steady_s:.0f} s without compiling" if took.steady_s < took.train_s - 1 else ""
    run.reporter.log(f"time budget: {fits} epochs instead of {run.epochs} (epoch {run.epoch} took "
                     f"{took.train_s:.0f} s{steady})")
    run.epochs = fits
    if run.ctx.is_main:
        write_config(run.run_dir, run.cfg.replace(epochs=fits), run.resolved)


def validate_epoch(run: Run, budget: TimeBudget | None) -> dict:
    """Validation metrics of the epoch (``None`` when it is not one that validates)."""
    cfg, ctx = run.cfg, run.ctx
    if not validates(run.epoch, run.epochs, cfg.val_every):
        return {"val_loss": None, "val_top1": None, "val_top5": None, "val_top1_single": None}
    tv = time.perf_counter()
    D.broadcast_buffers(run.eval_model, ctx)  # every rank validates with rank 0's BN statistics
    ev = evaluate(run.eval_model, run.splits.val, run.pre, batch_size=cfg.eval_batch_size, device=ctx.device,
                  channels_last=cfg.channels_last, ctx=ctx, workers=cfg.workers, tta=cfg.tta)
    if budget is not None:
        budget.validated(time.perf_counter() - tv)
    for p, r in ev["skipped"]:
        run.skipped.setdefault(p, r)
    return {"val_loss": ev["loss"], "val_top1": ev["top1"], "val_top5": ev["top5"],
            "val_top1_single": ev.get("top1_single")}


def end_epoch(run: Run, row: dict) -> None:
    """The epoch's metrics row; checkpoints, run state, metrics and curves (rank 0)."""
    cfg, spe, started = run.cfg, run.steps_per_epoch, row.pop("started")
    row = {"epoch": run.epoch, "epochs": run.epochs, "lr": learning_rate(cfg, run.step - 1, run.epochs * spe, spe),
           **row, "epoch_time_s": time.perf_counter() - started, "elapsed_s": run.elapsed()}
    if cfg.tta == "none":
        del row["val_top1_single"]
    run.history.append(row)
    if row["val_top1"] is not None and row["val_top1"] > run.best:
        run.best, run.best_epoch = row["val_top1"], run.epoch
    if run.ctx.is_main:
        save_epoch(run, row)
    run.reporter.epoch_end(row)
    D.barrier(run.ctx)


def save_epoch(run: Run, row: dict) -> None:
    """Checkpoints, then the run state, then the metrics: a kill before the state replays this
    epoch (rewriting the same checkpoints); a kill after it loses only metrics, which ``--resume``
    rewrites from the state."""
    cfg, s, model = run.cfg, run.splits, run.eval_model
    extra = {"epoch": run.epoch, "val_top1": None if row["val_top1"] is None else round(row["val_top1"], 3),
             "tta": cfg.tta, "recipe": cfg.recipe, "data": cfg.data, "val_size": s.info.get("val_size"),
             "split_seed": s.info.get("split_seed")}
    if cfg.qat:
        extra["qat"] = unwrap(run.model).record()
    model.checkpoint_meta = run.model.checkpoint_meta
    names = ["last.safetensors"] + (["best.safetensors"] if run.best_epoch == run.epoch else [])
    for name in names:
        save_checkpoint(run.run_dir / name, model, preprocessing=run.pre, class_names=list(s.class_names),
                        variant=cfg.model, extra=extra)
    save_state(run.run_dir, {"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
                             "ema": run.ema.module.state_dict() if run.ema is not None else None,
                             "epoch": run.epoch, "step": run.step, "history": run.history, "best": run.best,
                             "best_epoch": run.best_epoch, "elapsed_s": row["elapsed_s"], "rng": rng_state()})
    write_metrics(run.run_dir, run.history)
    try:
        plot_curves(run.run_dir, run.history)
    except Exception as exc:  # noqa: BLE001  (a plot must never stop training)
        run.reporter.log(f"note: could not plot curves: {exc}")


def finish(run: Run, stopped: str | None) -> RunResult:
    """The run's result; ``summary.json`` (rank 0)."""
    skipped = {**{s.path: s.reason for s in run.splits.skipped}, **run.skipped}
    result = RunResult(run.run_dir, run.best, run.best_epoch, run.history[-1] if run.history else {}, run.history,
                       [{"path": p, "reason": r} for p, r in sorted(skipped.items())], run.elapsed(), stopped)
    if run.ctx.is_main:
        write_summary(run.run_dir, result)
    return result
