"""Our MobileNets inside torchvision's task models: the layer list torchvision's extractors index,
their stage indices, and ``Taps``, the module that runs those layers and returns chosen outputs.

torchvision cuts its MobileNets at ``backbone.features``: the stem, every block, and the last 1x1
conv. Ours has the same list, ``layers(model)``: ``stem``, each of ``blocks``, and ``head`` where the
family has one (V2, V3; V1 and MobileNeXt end at their last block). ``Taps`` keeps the classifier's
state dict keys (``stem.*``, ``blocks.*``, ``head.*``), so classification checkpoints load into it
with only the classifier left out (``load_trunk``).
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import torch
from torch import nn

from ..core.errors import UsageError
from .blocks import InvertedResidual, UniversalInvertedBottleneck
from .network import MobileNet, ModelConfig
from .registry import model_config


def named_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``[("stem", stem), ("blocks.0", block), ..., ("head", head)]`` of a ``MobileNet`` (or a ``Taps``
    of one), ``head`` only where it is a layer: torchvision's ``features``, by our module names."""
    head = getattr(model, "head", None)
    tail = [] if head is None or isinstance(head, nn.Identity) else [("head", head)]
    return [("stem", model.stem), *((f"blocks.{i}", b) for i, b in enumerate(model.blocks)), *tail]


def layers(model: nn.Module) -> list[nn.Module]:
    """``[stem, *blocks, head]`` (``named_layers`` without the names)."""
    return [m for _, m in named_layers(model)]


def stage_indices(model: MobileNet) -> list[int]:
    """torchvision's ``stage_indices`` (``detection.backbone_utils._mobilenet_extractor``, and the
    segmentation builders): 0, every layer the paper's table strides (torchvision's ``_is_cn``,
    set from the table stride even where dilation replaced it), and the last layer."""
    n = len(layers(model))
    strided = [i for i, place in enumerate(model.config.layout) if i > 0 and place.table_stride > 1]
    return [0, *strided, n - 1]


def out_channels(layer: nn.Module) -> int:
    """The channels a layer of ``layers(model)`` returns: its last convolution's (every block ends
    in one: a projection, a pointwise or a depthwise conv)."""
    return [m for m in layer.modules() if isinstance(m, nn.Conv2d)][-1].out_channels


def expansion(block: nn.Module) -> nn.Module | None:
    """The expand 1x1 conv (+BN+act) after which SSDLite taps a block (``SSDLiteFeatureExtractorMobileNet``),
    or None where the block has none that can be split off: a depthwise-separable, sandglass or
    fused block, an inverted residual without expansion, a UIB whose stride is not after its
    expansion (no middle depthwise), or a block whose shortcut would span the split. The block
    runs in two halves, ``block.expanded`` and ``block.from_expanded``."""
    if not isinstance(block, (InvertedResidual, UniversalInvertedBottleneck)) or block.residual_channels:
        return None
    middle = block.dw_mid if isinstance(block, UniversalInvertedBottleneck) else block.dw
    if isinstance(block.expand, nn.Identity) or isinstance(middle, nn.Identity):
        return None
    return block.expand


class Taps(nn.Module):
    """A MobileNet's layers run in order, returning an ``OrderedDict`` of the outputs of the layers in
    ``taps`` ({layer index: name}, indices into ``layers(model)``), in execution order; ``split``
    (index, name) also returns the output of that block's expansion conv (``expansion``). Layers
    after the last tap are kept (their weights load) but not run, as torchvision's
    ``IntermediateLayerGetter`` would drop them. ``head=False`` leaves the head conv out (timm's
    ``features_only`` for V2, ``models.backbone``). ``config`` is the network's ``ModelConfig``."""

    def __init__(self, model: MobileNet, taps: Mapping[int, str], split: tuple[int, str] | None = None,
                 head: bool = True):
        super().__init__()
        self.config: ModelConfig = model.config
        self.stem, self.blocks = model.stem, model.blocks
        if head and not isinstance(model.head, nn.Identity):
            self.head = model.head
        layer_list = layers(self)
        n = len(layer_list)
        self.taps = {i % n: name for i, name in taps.items()}
        self.split = None if split is None else (split[0] % n, split[1])
        if self.split is not None and expansion(layer_list[self.split[0]]) is None:
            raise ValueError(f"layer {self.split[0]} has no expansion conv to split at")
        self.last = max(self.taps)
        points = [(i, name, out_channels(layer_list[i])) for i, name in self.taps.items()]
        if self.split is not None:  # before its block's output
            points.append((self.split[0] - 0.5, self.split[1], out_channels(layer_list[self.split[0]].expand)))
        self.channels = {name: ch for _, name, ch in sorted(points)}  # {output name: channels}, in output order

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        split = self.split[0] if self.split is not None else -1
        for i, layer in enumerate(layers(self)[:self.last + 1]):
            if i == split:  # a block without shortcut, in two halves (``expansion``)
                x = layer.expanded(x)
                out[self.split[1]] = x
                x = layer.from_expanded(x)
            else:
                x = layer(x)
            if i in self.taps:
                out[self.taps[i]] = x
        return out


def trunk(model: nn.Module) -> Taps:
    """The ``Taps`` inside a task model (its MobileNet layers)."""
    found = [m for m in model.modules() if isinstance(m, Taps)]
    if len(found) != 1:
        raise UsageError(f"a {type(model).__name__} with {len(found)} MobileNet backbones: expected one")
    return found[0]


def trunk_prefix(model: nn.Module) -> str:
    """The state dict key prefix of the ``Taps`` in ``model`` (``"backbone.body."``, ``"backbone."``)."""
    taps = trunk(model)
    return next(name for name, m in model.named_modules() if m is taps) + "."


def load_trunk(model: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str = "the checkpoint") -> None:
    """Copy a classifier's ``stem.*``/``blocks.*``/``head.*`` tensors into ``model``'s backbone; the
    classifier's other tensors (``classifier``, ``pre_logits``) are dropped. A tensor the backbone
    needs that is missing or has another shape raises ``UsageError``."""
    taps = trunk(model)
    wanted = taps.state_dict()
    missing = [k for k in wanted if k not in state_dict]
    wrong = [f"{k} {tuple(state_dict[k].shape)} (needs {tuple(v.shape)})" for k, v in wanted.items()
             if k in state_dict and state_dict[k].shape != v.shape]
    if missing or wrong:
        detail = f"missing {', '.join(missing[:4])}" if missing else f"shapes differ: {', '.join(wrong[:4])}"
        raise UsageError(f"{what} does not fit this {taps.config.family} backbone (width {taps.config.width}): "
                         f"{detail}")
    taps.load_state_dict({k: state_dict[k] for k in wanted})


def set_bn(module: nn.Module, momentum: float | None) -> None:
    """Give every BatchNorm in ``module`` torchvision's ``momentum`` for the task (None: keep ours)."""
    if momentum is None:
        return
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = momentum


def check_num_classes(num_classes) -> int:
    """``num_classes`` if it is a whole number >= 1 (torchvision's heads would take 0 or 2.5), else ``UsageError``."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise UsageError(f"num_classes must be a whole number >= 1, got {num_classes!r}")
    return num_classes


# ModelConfig fields a task's options may set on its backbone; the task fixes the rest.
TASK_FIELDS = ("family", "width", "num_classes", "resolution")
CONFIG_OPTIONS = tuple(f for f in ModelConfig.__dataclass_fields__ if f not in TASK_FIELDS)


def build_backbone(name: str, width: float | None, resolution: int, defaults: Mapping, options: Mapping
                   ) -> tuple[MobileNet, dict]:
    """Our MobileNet ``name`` (a registry name; ``width`` None: its own) for a task whose input is
    ``resolution`` pixels: ``ModelConfig`` options from ``options`` over the task's ``defaults``.
    Returns the network and the options left for torchvision's model class."""
    if "resolution" in options:
        raise UsageError("resolution is the task's (SSDLite: 320; Faster R-CNN: min_size=; segmentation: "
                         "the input's own size)")
    config = {k: v for k, v in {**defaults, **options}.items() if k in CONFIG_OPTIONS}
    net = MobileNet(model_config(name, width, resolution, **config))
    return net, {k: v for k, v in options.items() if k not in CONFIG_OPTIONS}


def describe(model: nn.Module, task: str, config: ModelConfig, resolution: int) -> nn.Module:
    """Set what profile and export code reads off a task model: ``task``, ``backbone_config``
    (our ``ModelConfig``) and ``resolution`` (the input side it is meant for)."""
    model.task, model.backbone_config, model.resolution = task, config, int(resolution)
    return model
