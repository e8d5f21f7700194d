"""The CPU speed-ups of training, behind one call: ``apply_speedups``.

- ``keep_memory``: malloc keeps freed memory, so a step does not fault its buffers back in
  (``allocator``);
- ``fast_depthwise``: depthwise weight gradients by a compiled loop (``fastdw``);
- ``bf16_pointwise``: bf16 in the 1x1 convolutions only, where the hardware has bf16 (``mixed``);
  ``bf16``: autocast of the whole model instead;
- ``channels_last`` memory format;
- ``compile``: ``torch.compile`` of the module the steps run (inside DDP when distributed).

Each leaves the parameters, state dict, evaluation and exports unchanged. ``check_speedups``
refuses what cannot work (``--compile`` without a C++ compiler) before any slow work starts.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..core.errors import UsageError
from ..core.hardware import bf16_supported, cxx_compiler
from . import distributed as D
from . import fastdw, mixed, qat
from .allocator import keep_freed_memory
from .config import TrainConfig
from .report import Reporter


@dataclass
class Speedups:
    """What ``apply_speedups`` did. ``net``: the module the training steps run (compiled if asked,
    inside DDP when distributed); ``bf16``: whole-model autocast; ``record``: for ``config.json``."""
    net: nn.Module
    bf16: bool
    record: dict = field(default_factory=dict)

    def describe(self) -> str:
        r = self.record
        precision = "bf16" if self.bf16 else (f"bf16 in {r['bf16_pointwise_layers']} 1x1 convs"
                                              if r["bf16_pointwise_layers"] else "fp32")
        return (f"{precision}, {r['memory_format']}, {r['fast_depthwise_layers']} fast depthwise layers"
                + (", compiled" if r["compiled"] else "") + (", freed memory kept" if r["keep_memory"] else ""))


def check_speedups(cfg: TrainConfig, device: torch.device) -> None:
    """Refuse, before any data is read, the speed-ups this machine cannot run."""
    qat.check(cfg)
    if cfg.compile and device.type == "cpu" and not cxx_compiler():
        raise UsageError("--compile on a CPU needs a C++ compiler (Inductor builds its kernels with one): "
                         "install g++ or set CXX, or pass --no-compile")


def apply_speedups(model: nn.Module, cfg: TrainConfig, ctx: D.Context, reporter: Reporter) -> Speedups:
    """Switch on ``cfg``'s speed-ups for training ``model`` (in place) on ``ctx.device``."""
    cpu = ctx.device.type == "cpu"
    kept = cfg.keep_memory and cpu and keep_freed_memory()
    model.to(memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
    bf16 = bf16_supported(ctx.device) and not cfg.qat if cfg.bf16 == "auto" else bool(cfg.bf16)
    fast_dw = fastdw.enable(model) if cfg.fast_depthwise and cpu and not bf16 else 0
    bf16_pw = 0  # with whole-model autocast the 1x1 convolutions are bf16 already
    if cfg.bf16_pointwise and not bf16:
        if bf16_supported(ctx.device):
            bf16_pw = mixed.enable(model)
        else:
            reporter.log(f"note: no bf16 on this {ctx.device.type}: the 1x1 convolutions stay fp32")
    record = {"bf16": bf16, "fast_depthwise_layers": fast_dw, "bf16_pointwise_layers": bf16_pw, "keep_memory": kept,
              "memory_format": "channels-last" if cfg.channels_last else "NCHW", "compiled": cfg.compile}
    return Speedups(D.wrap(model, ctx, cfg.compile), bf16, record)
