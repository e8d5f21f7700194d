"""One machine or many: the same training code under ``torchrun``.

``torchrun --nproc_per_node N -m mobilenets train ...`` sets ``RANK``/``WORLD_SIZE``/
``LOCAL_RANK``; ``setup()`` then joins the process group (nccl on GPUs, gloo on CPU) and
picks the device. Only rank 0 logs and writes files.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..core.hardware import resolve_device


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str | None = None) -> Context:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local)
    if world > 1 and not (dist.is_available() and dist.is_initialized()):
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend, rank=rank, world_size=world)
    return Context(rank, world, local, dev)


def teardown(ctx: Context) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, ctx: Context, compile: bool = False) -> torch.nn.Module:
    """The module to train: ``model``, ``torch.compile``d if asked, inside DistributedDataParallel
    when distributed (compiled inside DDP, not around it: that measured faster).

    On CPU, Dynamo's ``optimize_ddp`` is turned off: the compiled graph is no longer split at DDP's
    gradient buckets, so Inductor fuses across them, and gloo between processes on one machine loses
    little by not overlapping the all-reduce with the backward pass (``benchmarks/train_throughput.py``
    measures both).
    """
    if compile and ctx.distributed and ctx.device.type == "cpu":
        torch._dynamo.config.optimize_ddp = False  # process-wide; this process only trains
    net = torch.compile(model) if compile else model
    if ctx.distributed:
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    return net


def all_reduce_sum(values: list[float], ctx: Context) -> list[float]:
    """Sum a few numbers over ranks (metrics); identity on one process."""
    if not ctx.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast_object(obj, ctx: Context):
    """Rank 0's value of ``obj`` on every rank (e.g. the epochs a time budget picked)."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_buffers(module: torch.nn.Module, ctx: Context) -> None:
    """Rank 0's buffers (BN running statistics) on every rank."""
    if ctx.distributed:
        for b in module.buffers():
            dist.broadcast(b.data, src=0)


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()


def shard(index: torch.Tensor, ctx: Context, pad: bool = True) -> torch.Tensor:
    """This rank's share of ``index`` (as ``DistributedSampler``: padded to equal length when training)."""
    if not ctx.distributed:
        return index
    if pad:
        per = -(-len(index) // ctx.world_size)
        extra = per * ctx.world_size - len(index)
        if extra:
            index = torch.cat([index, index[:extra]])
    return index[ctx.rank::ctx.world_size]
