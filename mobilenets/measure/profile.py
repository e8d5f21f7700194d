"""Complexity of a model: MACs, parameters and activation memory, per layer and in total.

Conventions (those of the TF-slim tables): MACs are the multiply-accumulates of convolutions
and linear layers (squeeze-excite included) and of MobileNetV4's attention products for one image,
counted by PyTorch's ``FlopCounterMode`` (FLOPs / 2); BN, activations, softmax, pooling and adds
are excluded. Parameters include the classifier. Each Mobile MQA has a row of its own, its two
attention products (and the BatchNorm before them), so that the rows sum to the totals.

Activation memory models inference as a sequence of fused ops (conv+BN+activation is one op,
as every runtime executes it): while an op runs, its input and output are alive, plus every
tensor held for a shortcut that has not been added yet (the whole input of a residual block,
or only the identity slice of a MobileNeXt block). ``peak_memory`` is the maximum over the
network; ``shortcut_peak_memory`` the maximum over ops that run while a shortcut is held,
the quantity MobileNeXt's identity tensor multiplier reduces (the network-wide peak of most
MobileNets sits in the first, shortcut-free, high-resolution layers).

A model with ``feature_info`` (a classifier, a ``features_only`` backbone) is also summed by
stage: the layers up to each feature map (channels, reduction, MACs, params, peak memory), then
what follows the last one (the classifier's head). A detector or segmenter (a model with a
``task``) is summed by part: each top-level module (backbone, heads) and each part of its
backbone; a detector is profiled on one seeded random image, since its heads' work depends on
how many boxes survive.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..models.blocks import MobileMQA
from ..models.layers import ConvNormAct, LayerScale, is_depthwise
from ..models.taps import named_layers


@dataclass
class LayerProfile:
    name: str
    type: str
    output_shape: tuple[int, ...]
    macs: int
    params: int
    memory: int          # bytes alive while this layer runs (input + output + held shortcuts)


@dataclass
class PartProfile:
    """A group of layers: a backbone stage (``channels``/``reduction`` of its output feature map)
    or a part of a detector or segmenter (backbone, head...)."""
    name: str
    macs: int
    params: int
    memory: int          # bytes, the peak over its layers
    channels: int | None = None
    reduction: int | None = None
    output_shape: tuple[int, ...] | None = None


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
    stages: list[PartProfile] = field(default_factory=list)  # models with feature_info
    parts: list[PartProfile] = field(default_factory=list)   # detectors and segmenters

    def to_dict(self) -> dict:
        return asdict(self)


_OPS = (nn.Conv2d, nn.Linear, nn.AdaptiveAvgPool2d)  # BN and activations are fused into the conv


def _ops(model: nn.Module):
    """The table's rows in execution order: every conv, linear layer and pool, and each Mobile MQA's
    attention products, just before its output projection."""
    attention: dict[str, tuple[str, nn.Module]] = {}
    for name, m in model.named_modules():
        if isinstance(m, MobileMQA):
            attention[f"{name}.output"] = (name, m)
        if name in attention:
            yield attention.pop(name)
        if isinstance(m, _OPS):
            yield name, m


def _attention_elements(mqa: MobileMQA, x: torch.Tensor) -> int:
    """Elements of a Mobile MQA's attention matrix: every query position of every head against
    every (downsampled) key position."""
    b, _, h, w = x.shape
    s = mqa.kv_stride
    return b * mqa.heads * h * w * (-(-h // s)) * (-(-w // s))


def _input(model: nn.Module, res: int):
    """One image as ``model`` takes it: a batch for networks, a list of one image in [0, 1] for a
    detector (seeded, so that the count of boxes its heads process is reproducible)."""
    task = getattr(model, "task", None)
    if task in DETECTORS:
        return [torch.rand(3, res, res, generator=torch.Generator().manual_seed(0))]
    chans = model.backbone_config.in_chans if task else model.config.in_chans
    return torch.zeros(1, chans, res, res)


DETECTORS = ("ssdlite320", "fasterrcnn_fpn")


@torch.no_grad()
def profile(model: nn.Module, resolution: int | None = None, name: str | None = None,
            dtype_bytes: int = 4) -> Profile:
    """Profile ``model`` (a ``MobileNet``, a ``features_only`` backbone, or a detector or segmenter
    built by ``mobilenets.detection``/``segmentation``) on one image of ``resolution`` (default: the
    model's own)."""
    task = getattr(model, "task", None)
    res = resolution or (model.resolution if task else model.config.resolution)
    x = _input(model, res)
    records: dict[str, dict] = {}
    held: list[int] = []  # elements held for pending shortcuts

    def leaf_hook(mod_name):
        def hook(mod, inputs, output):
            inp = sum(t.numel() for t in inputs if torch.is_tensor(t))
            live = inp + output.numel() + sum(held)
            if isinstance(mod, MobileMQA):  # its peak: the input, the attention matrix, the output
                live += _attention_elements(mod, inputs[0])
            if live > records.get(mod_name, {}).get("live", -1):  # a module run twice (a shared head): its largest call
                records[mod_name] = dict(shape=tuple(output.shape), live=live, held=sum(held))
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
        counts = flops.get(f"{root}.{mod_name}", {})
        if isinstance(m, MobileMQA):  # its own row: the attention products (its convs have theirs)
            macs = counts.get(torch.ops.aten.bmm, 0) // 2
            shape = records[mod_name]["shape"]
            shape = (shape[0], m.heads * m.key_dim, *shape[2:])
        else:
            macs, shape = sum(counts.values()) // 2, records[mod_name]["shape"]
        layers.append(LayerProfile(
            name=mod_name, type=_op_type(m), output_shape=shape,
            macs=int(macs), params=_op_params(mod_name, m, modules),
            memory=records[mod_name]["live"] * dtype_bytes))
    return Profile(
        model=name or (task if task else model.config.family), resolution=res,
        macs=int(counter.get_total_flops() // 2),
        params=sum(p.numel() for p in model.parameters()),
        peak_memory=max(lay.memory for lay in layers),
        shortcut_peak_memory=max((records[lay.name]["live"] * dtype_bytes for lay in layers
                                  if records[lay.name]["held"]), default=0),
        dtype_bytes=dtype_bytes, layers=layers,
        stages=_stages(model, layers) if hasattr(model, "feature_info") and not task else [],
        parts=_parts(model, layers) if task else [])


def _sum(name: str, layers: list[LayerProfile], **kw) -> PartProfile:
    return PartProfile(name, sum(lay.macs for lay in layers), sum(lay.params for lay in layers),
                       max((lay.memory for lay in layers), default=0), **kw)


def _stages(model: nn.Module, layers: list[LayerProfile]) -> list[PartProfile]:
    """The layers up to each feature map of ``model.feature_info``, then those after the last."""
    info = list(model.feature_info)
    order = [name for name, _ in named_layers(model)]
    ends = [order.index(d["module"]) for d in info]
    groups: list[list[LayerProfile]] = [[] for _ in range(len(info) + 1)]
    for lay in layers:
        top = ".".join(lay.name.split(".")[:2]) if lay.name.startswith("blocks.") else lay.name.split(".")[0]
        pos = order.index(top) if top in order else len(order)
        groups[next((k for k, end in enumerate(ends) if pos <= end), len(info))].append(lay)
    stages = []
    for k, d in enumerate(info):
        shape = next((lay.output_shape for lay in reversed(groups[k])), None)
        stages.append(_sum(f"stage {k} (to {d['module']})", groups[k], channels=d["num_chs"],
                           reduction=d["reduction"], output_shape=shape))
    if groups[-1]:
        stages.append(_sum("after the last feature map", groups[-1]))
    return stages


def _parts(model: nn.Module, layers: list[LayerProfile]) -> list[PartProfile]:
    """Each top-level module of a detector or segmenter, and each part of its backbone (the sums of
    their convolutions and linear layers; RoI pooling, NMS and resizing count nothing)."""
    names = []
    for n, child in model.named_children():
        names.append(n)
        if n == "backbone":
            names += [f"backbone.{c}" for c, _ in child.named_children()]
    modules = dict(model.named_modules())
    parts = []
    for n in names:
        inside = [lay for lay in layers if lay.name.startswith(n + ".")]
        params = sum(p.numel() for p in modules[n].parameters())
        if params or inside:
            parts.append(PartProfile(n, sum(lay.macs for lay in inside), params,
                                     max((lay.memory for lay in inside), default=0)))
    return parts


def _op_params(name: str, m: nn.Module, modules: dict[str, nn.Module]) -> int:
    """Parameters of an op, with what a runtime fuses into it, so that the rows sum to the total:
    its BatchNorm (a ``ConvNormAct``'s, or the one after it in a ``Sequential``: V4's pre-logits),
    the layer scale of the block it ends (V4's hybrids), and for a Mobile MQA row its BatchNorm."""
    if isinstance(m, MobileMQA):
        return sum(p.numel() for p in m.norm.parameters())
    parent_name = name.rpartition(".")[0]
    parent = modules.get(parent_name)
    unit, unit_name = (parent, parent_name) if isinstance(parent, ConvNormAct) else (m, name)
    count = sum(p.numel() for p in unit.parameters())
    holder = modules.get(unit_name.rpartition(".")[0])
    if isinstance(holder, nn.Sequential):
        siblings = list(holder)
        after = siblings[siblings.index(unit) + 1] if siblings.index(unit) + 1 < len(siblings) else None
        if isinstance(after, nn.modules.batchnorm._BatchNorm):
            count += sum(p.numel() for p in after.parameters())
    scale = getattr(holder, "layer_scale", None)
    if isinstance(scale, LayerScale) and unit is (getattr(holder, "project", None) or getattr(holder, "output", None)):
        count += scale.gamma.numel()
    return count


def _op_type(m: nn.Module) -> str:
    if isinstance(m, MobileMQA):
        return f"attention {m.heads}x{m.key_dim}" + (f" kv/{m.kv_stride}" if m.kv_stride > 1 else "")
    if isinstance(m, nn.Conv2d):
        kind = "dwconv" if is_depthwise(m) else "conv"
        return f"{kind} {m.kernel_size[0]}x{m.kernel_size[1]}/{m.stride[0]}"
    return {nn.Linear: "linear", nn.AdaptiveAvgPool2d: "avgpool"}[type(m)]
