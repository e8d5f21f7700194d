"""Export-time rewrites: the graph a runtime should see, built on a copy of the model.

The PyTorch module keeps its architecture (BN layers, dropout, ``nn.Linear`` head: what training
and checkpoints need). ``deploy_module`` returns a separate inference module that computes the
same function with the layout runtimes execute fastest:

* BatchNorm folded into the preceding convolution (``conv -> act`` is then one fusable pair);
* dropout gone (it is the identity at inference);
* the squeeze-excite pool and the final pool as global average pooling (ONNX
  ``GlobalAveragePool``, which quantizers know; ``ReduceMean`` stays float in ONNX Runtime's
  QDQ recipe);
* the dense layers of the head as 1x1 convolutions on the pooled ``N x C x 1 x 1`` tensor, with a
  single flatten at the very end (no reshape between the pool and the classifier);
* ``nn.Hardswish`` / ``nn.Hardsigmoid`` kept as modules, so they export as the runtimes' native
  HardSwish / HardSigmoid ops (HARD_SWISH in TFLite) instead of a decomposition;
* optionally an NHWC input (TFLite, image pipelines that hand over HWC buffers).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..models.layers import ConvNormAct, SqueezeExcite
from ..models.network import MobileNet, unwrap


class GlobalPoolSE(nn.Module):
    """``SqueezeExcite`` with the squeeze as ``adaptive_avg_pool2d(x, 1)`` (exports as GlobalAveragePool)."""

    def __init__(self, se: SqueezeExcite):
        super().__init__()
        self.fc1, self.act, self.fc2, self.gate = se.fc1, se.act, se.fc2, se.gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * self.gate(self.fc2(self.act(self.fc1(s))))


def fold_hardsigmoid(module: nn.Module) -> nn.Module:
    """Every squeeze-excite gate ``hardsigmoid(conv(s))`` rewritten, in place, as ``clamp(conv'(s), 0, 1)``
    with ``conv'`` = ``conv / 6 + 0.5`` (weights and bias scaled, bias shifted): the same function with
    no arithmetic on constants, for runtimes that have no hard-sigmoid and would otherwise run its
    ``+ 3`` and ``/ 6`` outside their delegate (ExecuTorch's XNNPACK)."""
    for m in module.modules():
        if isinstance(m, GlobalPoolSE) and isinstance(m.gate, nn.Hardsigmoid) and isinstance(m.fc2, nn.Conv2d):
            conv = copy.deepcopy(m.fc2)
            with torch.no_grad():
                conv.weight.div_(6.0)
                if conv.bias is None:
                    conv.bias = nn.Parameter(torch.zeros(conv.out_channels))
                conv.bias.div_(6.0).add_(0.5)
            m.fc2, m.gate = conv, nn.Hardtanh(0.0, 1.0)
    return module


def linear_to_conv(linear: nn.Linear) -> nn.Conv2d:
    """The 1x1 convolution computing ``linear`` on an ``N x C x 1 x 1`` tensor (same weights)."""
    conv = nn.Conv2d(linear.in_features, linear.out_features, 1, bias=linear.bias is not None)
    with torch.no_grad():
        conv.weight.copy_(linear.weight.reshape(linear.out_features, linear.in_features, 1, 1))
        if linear.bias is not None:
            conv.bias.copy_(linear.bias)
    return conv


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every ``ConvNormAct``'s BatchNorm into its conv, in place (the module must be in eval mode)."""
    for m in module.modules():
        if isinstance(m, ConvNormAct) and isinstance(m.bn, nn.BatchNorm2d):
            m.conv = fuse_conv_bn_eval(m.conv, m.bn)
            m.bn = nn.Identity()
    return module


def _strip(module: nn.Module) -> nn.Module:
    """Dropout -> Identity and SE -> GlobalPoolSE, in place; in-place activations made out-of-place
    (exporters and quantizers see plain values)."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Dropout):
            setattr(module, name, nn.Identity())
        elif isinstance(child, SqueezeExcite):
            setattr(module, name, _strip(GlobalPoolSE(child)))  # its ReLU made out-of-place too
        else:
            if isinstance(child, (nn.ReLU, nn.ReLU6)):
                child.inplace = False
            _strip(child)
    return module


class DeployNet(nn.Module):
    """A MobileNet as runtimes see it: ``stem -> blocks -> head -> global pool -> 1x1 convs -> flatten``.

    Same function as the source model in eval mode (to float rounding); ``nhwc=True`` takes
    ``N x H x W x C`` input.
    """

    def __init__(self, model: MobileNet, nhwc: bool = False, head_as_conv: bool = True):
        super().__init__()
        src = copy.deepcopy(model).cpu().float().eval()
        fold_batchnorm(src)
        _strip(src)
        self.config = src.config
        self.nhwc = nhwc
        self.stem, self.blocks, self.head = src.stem, src.blocks, src.head
        self.head_as_conv = head_as_conv
        pre = src.pre_logits
        if isinstance(pre, nn.Sequential) and head_as_conv:
            pre = nn.Sequential(linear_to_conv(pre.fc), pre.act)
        self.pre_logits = pre
        self.classifier = linear_to_conv(src.classifier) if head_as_conv else src.classifier
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.nhwc:
            x = x.permute(0, 3, 1, 2)
        x = F.adaptive_avg_pool2d(self.head(self.blocks(self.stem(x))), 1)
        if self.head_as_conv:
            return torch.flatten(self.classifier(self.pre_logits(x)), 1)
        return self.classifier(self.pre_logits(torch.flatten(x, 1)))


def deploy_module(model: nn.Module, nhwc: bool = False, head_as_conv: bool = True) -> nn.Module:
    """The export copy of ``model``: a ``DeployNet`` for our MobileNets; any other module is
    copied in eval mode with only dropout removed (``nhwc`` then adds a permute)."""
    model = unwrap(model)
    if isinstance(model, MobileNet):
        return DeployNet(model, nhwc=nhwc, head_as_conv=head_as_conv)
    other = _strip_dropout(copy.deepcopy(model).cpu().float().eval())
    return _NHWC(other) if nhwc else other


def _strip_dropout(module: nn.Module) -> nn.Module:
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Dropout):
            setattr(module, name, nn.Identity())
        else:
            _strip_dropout(child)
    return module


class _NHWC(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.permute(0, 3, 1, 2))


# --------------------------------------------------------------------------------------------
# ONNX-level rewrites (after torch.onnx.export)

def _const_ints(graph, name: str) -> list[int] | None:
    from onnx import numpy_helper
    for init in graph.initializer:
        if init.name == name:
            return [int(v) for v in numpy_helper.to_array(init).reshape(-1)]
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            for attr in node.attribute:
                if attr.name == "value":
                    return [int(v) for v in numpy_helper.to_array(attr.t).reshape(-1)]
    return None


def reduce_mean_to_global_pool(model):
    """``ReduceMean(axes=[2, 3] or [-2, -1], keepdims=1)`` on 4-D tensors -> ``GlobalAveragePool``,
    in place. The dynamo exporter writes global pooling as ReduceMean; GlobalAveragePool has a
    quantized kernel in ONNX Runtime (QLinearGlobalAveragePool) and OpenVINO reads both."""
    import onnx

    graph = model.graph
    ranks = {vi.name: len(vi.type.tensor_type.shape.dim) for vi in
             list(graph.value_info) + list(graph.input) + list(graph.output)}
    changed = 0
    for i, node in enumerate(graph.node):
        if node.op_type != "ReduceMean":
            continue
        keep = next((a.i for a in node.attribute if a.name == "keepdims"), 1)
        axes = next((list(a.ints) for a in node.attribute if a.name == "axes"), None)
        if axes is None and len(node.input) > 1:
            axes = _const_ints(graph, node.input[1])
        if keep != 1 or axes is None or ranks.get(node.input[0], 4) != 4 or sorted(a % 4 for a in axes) != [2, 3]:
            continue
        graph.node[i].CopyFrom(onnx.helper.make_node("GlobalAveragePool", [node.input[0]], list(node.output),
                                                     name=node.name or f"gap_{i}"))
        changed += 1
    return changed


def strip_metadata(model) -> None:
    """Drop the exporter's per-value metadata (torch FX node names, stack traces): size, not meaning."""
    graph = model.graph
    for coll in (graph.input, graph.output, graph.value_info, graph.node):
        for item in coll:
            del item.metadata_props[:]
    for init in graph.initializer:
        del init.metadata_props[:]
