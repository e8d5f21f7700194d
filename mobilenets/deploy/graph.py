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

Dense-prediction models get the same rewrites and return a tuple of tensors, the order of the
export's named outputs (``output_list`` gives a PyTorch model's outputs in that order): a backbone
(``FeatureNet``) its feature maps; a torchvision segmentation model (LR-ASPP, DeepLabV3, FCN) its
``"out"`` map, the auxiliary head (training only) left out; a torchvision detector (SSD, Faster
R-CNN) boxes, scores and labels of one ``3 x H x W`` image, its resize, normalisation and
post-processing (box decoding, NMS) included.
"""
from __future__ import annotations

import copy
import sys

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from ..core.errors import UsageError
from ..models.backbone import FeatureNet
from ..models.layers import ConvNormAct, SqueezeExcite
from ..models.network import MobileNet, unwrap


class GlobalPoolSE(nn.Module):
    """``SqueezeExcite`` (or torchvision's ``SqueezeExcitation``, the same function) with the squeeze as
    ``adaptive_avg_pool2d(x, 1)`` (exports as GlobalAveragePool)."""

    def __init__(self, se: nn.Module):
        super().__init__()
        if isinstance(se, SqueezeExcite):
            self.fc1, self.act, self.fc2, self.gate = se.fc1, se.act, se.fc2, se.gate
        else:
            self.fc1, self.act, self.fc2, self.gate = se.fc1, se.activation, se.fc2, se.scale_activation

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


class ErfGELU(nn.Module):
    """The exact GELU, ``x * (erf(x / sqrt 2) / 2 + 1/2)``, in an order that MNN's converter does not
    recognise as its GELU: MNN computes that one by an approximation 4.7e-4 away from the exact
    function (MobileNetV4-Hybrid-L's logits: 6e-3), but its Erf exactly (1e-6)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (torch.erf(x * 0.7071067811865476) * 0.5 + 0.5)


def exact_gelu(module: nn.Module) -> nn.Module:
    """Every exact ``nn.GELU`` of ``module`` replaced by ``ErfGELU``, in place."""
    for m in list(module.modules()):
        for child_name, child in list(m.named_children()):
            if isinstance(child, nn.GELU) and child.approximate == "none":
                setattr(m, child_name, ErfGELU())
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
    """Fold every ``ConvNormAct``'s BatchNorm, and every BatchNorm that follows a conv (or a linear
    layer: MobileNetV4's pre-logits) in an ``nn.Sequential`` (torchvision's ``Conv2dNormActivation``,
    its heads' conv-BN-ReLU), into the conv, in place (the module must be in eval mode)."""
    for m in module.modules():
        if isinstance(m, ConvNormAct) and isinstance(m.bn, nn.BatchNorm2d):
            m.conv = fuse_conv_bn_eval(m.conv, m.bn)
            m.bn = nn.Identity()
        elif isinstance(m, nn.Sequential):
            layers = list(m)
            for i in range(len(layers) - 1):
                if type(layers[i]) is nn.Conv2d and type(layers[i + 1]) is nn.BatchNorm2d:
                    m[i], m[i + 1] = fuse_conv_bn_eval(layers[i], layers[i + 1]), nn.Identity()
                elif type(layers[i]) is nn.Linear and type(layers[i + 1]) is nn.BatchNorm1d:
                    m[i], m[i + 1] = fuse_linear_bn_eval(layers[i], layers[i + 1]), nn.Identity()
    return module


_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh)


def _strip(module: nn.Module) -> nn.Module:
    """Dropout -> Identity and SE (ours, torchvision's) -> GlobalPoolSE, in place; in-place activations
    made out-of-place (exporters and quantizers see plain values; torch.export decomposes an in-place
    hard-swish, which XNNPACK would then not run as one)."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Dropout):
            setattr(module, name, nn.Identity())
        elif isinstance(child, SqueezeExcite) or _is_torchvision_se(child):
            setattr(module, name, _strip(GlobalPoolSE(child)))  # its ReLU made out-of-place too
        else:
            if isinstance(child, _ACTIVATIONS):
                child.inplace = False
            _strip(child)
    return module


def _is_torchvision_se(module: nn.Module) -> bool:
    if "torchvision" not in sys.modules:  # a torchvision module means torchvision was imported
        return False
    from torchvision.ops.misc import SqueezeExcitation
    return isinstance(module, SqueezeExcitation)


class DeployNet(nn.Module):
    """A MobileNet as runtimes see it: ``stem -> blocks -> head -> global pool -> 1x1 convs -> flatten``.

    Same function as the source model in eval mode (to float rounding); ``nhwc=True`` takes
    ``N x H x W x C`` input.
    """

    def __init__(self, model: MobileNet, nhwc: bool = False, head_as_conv: bool = True):
        super().__init__()
        src = _rewritten(model)
        self.config = src.config
        self.nhwc = nhwc
        self.stem, self.blocks, self.head = src.stem, src.blocks, src.head
        self.head_as_conv = head_as_conv
        pre = src.pre_logits
        if isinstance(pre, nn.Sequential) and head_as_conv:
            pre = nn.Sequential(linear_to_conv(pre.fc), pre.act)  # a BatchNorm after fc is folded into it
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


def _rewritten(model: nn.Module) -> nn.Module:
    """An eval-mode float copy of ``model`` with BN folded, dropout gone and SE pools global."""
    src = copy.deepcopy(model).cpu().float().eval()
    fold_batchnorm(src)
    return _strip(src)


class DeployFeatures(nn.Module):
    """A backbone (``FeatureNet``) as runtimes see it: the rewrites of ``DeployNet``, the feature
    maps returned as a tuple in ``feature_info``'s order; ``nhwc=True`` takes N x H x W x C input."""

    def __init__(self, model: FeatureNet, nhwc: bool = False):
        super().__init__()
        self.features = _rewritten(model)
        self.config, self.nhwc = model.config, nhwc
        self.eval()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.features(x.permute(0, 3, 1, 2) if self.nhwc else x))


class DeploySegmenter(nn.Module):
    """A torchvision segmentation model as runtimes see it: BN folded into the convs, dropout gone,
    the auxiliary head left out; returns the ``"out"`` map, N x classes x H x W at the input's size."""

    def __init__(self, model: nn.Module, nhwc: bool = False):
        super().__init__()
        self.model = _rewritten(model)
        if getattr(self.model, "aux_classifier", None) is not None:
            self.model.aux_classifier = None
        self.nhwc = nhwc
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.permute(0, 3, 1, 2) if self.nhwc else x)["out"]


class DeployDetector(nn.Module):
    """A torchvision detector as runtimes see it, on one image ``3 x H x W`` (float in [0, 1], as
    torchvision's detectors take): its transform (resize, normalisation), network (BN folded) and
    post-processing (box decoding, NMS); returns ``(boxes, scores, labels)``: K x 4 boxes (x1, y1,
    x2, y2 in input pixels), K scores and K int64 labels, best first."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = _rewritten(model)
        self.eval()

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        found = self.model([image])[0]
        return found["boxes"], found["scores"], found["labels"]


def torchvision_kind(model: nn.Module) -> str | None:
    """"segmentation" for torchvision's segmentation models (LR-ASPP, DeepLabV3, FCN), "detection"
    for its SSD and Faster R-CNN detectors (our builders return these classes), else None."""
    if "torchvision" not in sys.modules:  # a torchvision model means torchvision was imported
        return None
    from torchvision.models.detection import FasterRCNN, KeypointRCNN, MaskRCNN
    from torchvision.models.detection.ssd import SSD
    from torchvision.models.segmentation import LRASPP
    from torchvision.models.segmentation._utils import _SimpleSegmentationModel
    if isinstance(model, (LRASPP, _SimpleSegmentationModel)):
        return "segmentation"
    if isinstance(model, SSD) or (isinstance(model, FasterRCNN) and not isinstance(model, (MaskRCNN, KeypointRCNN))):
        return "detection"
    return None


def output_list(value) -> list[torch.Tensor]:
    """A PyTorch model's outputs in the order of the export's named outputs: a tensor alone, a list
    or tuple as it is, a segmentation model's dict as its ``"out"`` map, a detector's list of one
    image's detections as its boxes, scores and labels."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [value["out"]]
    if isinstance(value, (list, tuple)) and len(value) == 1 and isinstance(value[0], dict):
        return [value[0][k] for k in ("boxes", "scores", "labels")]
    return list(value)


def deploy_module(model: nn.Module, nhwc: bool = False, head_as_conv: bool = True) -> nn.Module:
    """The export copy of ``model``: a ``DeployNet`` for our MobileNets, a ``DeployFeatures`` for our
    backbones, a ``DeploySegmenter`` or ``DeployDetector`` (no ``nhwc``) for torchvision's dense models;
    any other module is copied in eval mode with only dropout removed (``nhwc`` then adds a permute)."""
    model = unwrap(model)
    if isinstance(model, MobileNet):
        return DeployNet(model, nhwc=nhwc, head_as_conv=head_as_conv)
    if isinstance(model, FeatureNet):
        return DeployFeatures(model, nhwc=nhwc)
    kind = torchvision_kind(model)
    if kind == "segmentation":
        return DeploySegmenter(model, nhwc=nhwc)
    if kind == "detection":
        if nhwc:
            raise UsageError("a detector takes one C x H x W image: no NHWC input")
        return DeployDetector(model)
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
