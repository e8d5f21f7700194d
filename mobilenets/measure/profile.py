"""Complexity of a model: MACs, parameters and activation memory, per layer and in total.

Conventions (those of the TF-slim tables): MACs are the multiply-accumulates of convolutions
and linear layers (squeeze-excite included) for one image, counted by PyTorch's
``FlopCounterMode`` (FLOPs / 2); BN, activations, pooling and adds are excluded. Parameters
include the classifier.

Activation memory models inference as a sequence of fused ops (conv+BN+activation is one op,
as every runtime executes it): while an op runs, its input and output are alive, plus every
tensor held for a shortcut that has not been added yet (the whole input of a residual block,
or only the identity slice of a MobileNeXt block). ``peak_memory`` is the maximum over the
network; ``shortcut_peak_memory`` the maximum over ops that run while a shortcut is held,
the quantity MobileNeXt's identity tensor multiplier reduces (the network-wide peak of most
MobileNets sits in the first, shortcut-free, high-resolution layers).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..models.layers import ConvNormAct, is_depthwise
from ..models.network import MobileNet


@dataclass
class LayerProfile:
    name: str
    type: str
    output_shape: tuple[int, ...]
    macs: int
    params: int
    memory: int          # bytes alive while this layer runs (input + output + held shortcuts)


@dataclass
class Profile:
    model: str
    resolution: int
    macs: int
    params: int
    peak_memory: int     # bytes
    shortcut_peak_memory: int  # bytes, over ops running while a shortcut is held
    dtype_bytes: int
    layers: list[LayerProfile] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


_OPS = (nn.Conv2d, nn.Linear, nn.AdaptiveAvgPool2d)  # BN and activations are fused into the conv


def _ops(model: nn.Module):
    for name, m in model.named_modules():
        if isinstance(m, _OPS):
            yield name, m


@torch.no_grad()
def profile(model: MobileNet, resolution: int | None = None, name: str | None = None,
            dtype_bytes: int = 4) -> Profile:
    """Profile ``model`` on one image of ``resolution`` (default: the model's own)."""
    res = resolution or model.config.resolution
    x = torch.zeros(1, model.config.in_chans, res, res)
    records: dict[str, dict] = {}
    held: list[int] = []  # elements held for pending shortcuts

    def leaf_hook(mod_name):
        def hook(mod, inputs, output):
            inp = sum(t.numel() for t in inputs if torch.is_tensor(t))
            records[mod_name] = dict(shape=tuple(output.shape), live=inp + output.numel() + sum(held),
                                    held=sum(held))
        return hook

    def block_pre(mod, inputs):
        held.append(mod.residual_channels * inputs[0].shape[2] * inputs[0].shape[3] if mod.residual_channels else 0)

    def block_post(mod, inputs, output):
        held.pop()

    handles = []
    for mod_name, m in _ops(model):
        handles.append(m.register_forward_hook(leaf_hook(mod_name)))
    for m in model.modules():
        if hasattr(m, "residual_channels"):
            handles.append(m.register_forward_pre_hook(block_pre))
            handles.append(m.register_forward_hook(block_post))
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)

    flops = counter.get_flop_counts()
    layers = []
    root = type(model).__name__
    modules = dict(model.named_modules())
    for mod_name, m in _ops(model):
        if mod_name not in records:
            continue
        macs = sum(flops.get(f"{root}.{mod_name}", {}).values()) // 2
        layers.append(LayerProfile(
            name=mod_name, type=_op_type(m), output_shape=records[mod_name]["shape"],
            macs=int(macs), params=_op_params(mod_name, m, modules),
            memory=records[mod_name]["live"] * dtype_bytes))
    return Profile(
        model=name or model.config.family, resolution=res,
        macs=int(counter.get_total_flops() // 2),
        params=sum(p.numel() for p in model.parameters()),
        peak_memory=max(lay.memory for lay in layers),
        shortcut_peak_memory=max((records[lay.name]["live"] * dtype_bytes for lay in layers
                                  if records[lay.name]["held"]), default=0),
        dtype_bytes=dtype_bytes, layers=layers)


def _op_params(name: str, m: nn.Module, modules: dict[str, nn.Module]) -> int:
    """Parameters of an op, with the BatchNorm fused into it (so the rows sum to the total)."""
    parent = modules.get(name.rpartition(".")[0])
    unit = parent if isinstance(parent, ConvNormAct) else m
    return sum(p.numel() for p in unit.parameters())


def _op_type(m: nn.Module) -> str:
    if isinstance(m, nn.Conv2d):
        kind = "dwconv" if is_depthwise(m) else "conv"
        return f"{kind} {m.kernel_size[0]}x{m.kernel_size[1]}/{m.stride[0]}"
    return {nn.Linear: "linear", nn.AdaptiveAvgPool2d: "avgpool"}[type(m)]
