"""Detection models on any of our MobileNets, with torchvision's own heads (architecture only).

``ssdlite320`` is torchvision's ``ssdlite320_mobilenet_v3_large`` and ``fasterrcnn_fpn`` its
``fasterrcnn_mobilenet_v3_large_fpn``, with our network where torchvision's MobileNetV3 sits; with
``backbone="mobilenet_v3_large"`` and torchvision's channel rules (``weights.convert``) they compute
what torchvision's do, tensor for tensor. Loading weights is the ``mobilenets.detection`` layer's.
torchvision's detection package is imported on first use: it takes a second to import.
"""
from __future__ import annotations

from collections import OrderedDict
from functools import partial
from itertools import pairwise
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from torchvision.models.detection.faster_rcnn import FasterRCNN
    from torchvision.models.detection.ssd import SSD

from .registry import get_variant
from .taps import Taps, build_backbone, check_num_classes, describe, expansion, layers, set_bn, stage_indices

SSDLITE_SIZE = 320
# ssdlite320_mobilenet_v3_large: norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03), for the
# backbone, the extra blocks and the head.
SSDLITE_BN_EPS, SSDLITE_BN_MOMENTUM = 0.001, 0.03
# SSDLiteFeatureExtractorMobileNet's get_depth(512, 256, 256, 128): max(16, int(d * width_mult)) with the
# width_mult=1.0 that ssdlite's _mobilenet_extractor leaves, whatever the backbone's width.
SSDLITE_EXTRA_DEPTHS = (512, 256, 256, 128)
SSDLITE_DEFAULTS = {"score_thresh": 0.001, "nms_thresh": 0.55, "detections_per_img": 300, "topk_candidates": 300,
                    "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}

FPN_CHANNELS = 256
FASTERRCNN_MIN_SIZE = 800  # GeneralizedRCNNTransform's default min_size, which FasterRCNN keeps
# fasterrcnn_mobilenet_v3_large_fpn: mobilenet_v3_large(norm_layer=nn.BatchNorm2d), i.e. eps 1e-5
# (FrozenBatchNorm2d, also eps 1e-5, when it starts from trained weights).
FASTERRCNN_BN_EPS = 1e-5
FASTERRCNN_ANCHOR_SIZES = ((32, 64, 128, 256, 512),) * 3
FASTERRCNN_ASPECT_RATIOS = ((0.5, 1.0, 2.0),) * 3
FASTERRCNN_DEFAULTS = {"rpn_score_thresh": 0.05}


class SSDLiteBackbone(nn.Module):
    """torchvision's ``SSDLiteFeatureExtractorMobileNet`` on our network: ``body`` returns maps "0"
    (stride 16) and "1" (the last layer), the four ``extra`` blocks "2".."5" from the last."""

    def __init__(self, body: Taps, extra: nn.ModuleList):
        super().__init__()
        self.body, self.extra = body, extra
        self.out_channels = [*body.channels.values(), *(block[-1].out_channels for block in extra)]

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        out = self.body(x)
        x = next(reversed(out.values()))
        for block in self.extra:
            x = block(x)
            out[str(len(out))] = x
        return out


class FPNBackbone(nn.Module):
    """torchvision's ``BackboneWithFPN`` with ``body`` our ``Taps`` (for its ``IntermediateLayerGetter``):
    ``fpn`` a ``FeaturePyramidNetwork`` with ``LastLevelMaxPool`` over the maps ``body`` returns."""

    def __init__(self, body: Taps, out_channels: int = FPN_CHANNELS):
        from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(list(body.channels.values()), out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.fpn(self.body(x))


def ssdlite320(backbone: str = "mobilenet_v3_large", width: float | None = None, num_classes: int = 91, *,
               reduced_tail: bool | None = None, **options) -> SSD:
    """torchvision's ``ssdlite320_mobilenet_v3_large`` (no pretrained backbone) on our ``backbone``.

    The backbone (``SSDLiteFeatureExtractorMobileNet``): map "0" is the output of the expand 1x1 conv
    of the block at the last table-strided position (C4, stride 16), map "1" the rest of that block,
    the remaining blocks and the head conv (stride 32); then four ``_extra_block``s. Where C4 has no
    expansion conv to split at (V1's depthwise-separable and MobileNeXt's sandglass blocks, an
    inverted residual without expansion), map "0" is the output of the block before C4, also at
    stride 16. BatchNorm eps 0.001, momentum 0.03 throughout; convolutions of the backbone, extras and
    head initialised N(0, 0.03) (``_normal_init``). ``reduced_tail`` None: True for MobileNetV3 (as
    torchvision does without a pretrained backbone), False otherwise. ``width`` None: the backbone
    name's own (1.0 for a family name). ``options``: ``ModelConfig`` fields for the backbone
    (``output_stride``, ``bn_eps``...), the rest to torchvision's ``SSD`` over its defaults
    (``score_thresh`` 0.001, ``nms_thresh`` 0.55, 300 detections and candidates, mean/std 0.5).
    """
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
    from torchvision.models.detection.ssd import SSD
    from torchvision.models.detection.ssdlite import SSDLiteHead, _extra_block, _normal_init

    check_num_classes(num_classes)
    if reduced_tail is None:
        reduced_tail = get_variant(backbone).family.startswith("mobilenet_v3")
    net, kwargs = build_backbone(backbone, width, SSDLITE_SIZE, {"bn_eps": SSDLITE_BN_EPS},
                                 {**options, "reduced_tail": reduced_tail})
    _normal_init(net)
    c4 = stage_indices(net)[-2]
    if expansion(layers(net)[c4]) is not None:
        body = Taps(net, {-1: "1"}, split=(c4, "0"))
    else:
        body = Taps(net, {c4 - 1: "0", -1: "1"})
    set_bn(body, SSDLITE_BN_MOMENTUM)
    norm = partial(nn.BatchNorm2d, eps=SSDLITE_BN_EPS, momentum=SSDLITE_BN_MOMENTUM)
    depths = (body.channels["1"], *SSDLITE_EXTRA_DEPTHS)
    extra = nn.ModuleList([_extra_block(cin, cout, norm) for cin, cout in pairwise(depths)])
    _normal_init(extra)
    feature_extractor = SSDLiteBackbone(body, extra)
    anchors = DefaultBoxGenerator([[2, 3] for _ in feature_extractor.out_channels], min_ratio=0.2, max_ratio=0.95)
    head = SSDLiteHead(feature_extractor.out_channels, anchors.num_anchors_per_location(), num_classes, norm)
    model = SSD(feature_extractor, anchors, (SSDLITE_SIZE, SSDLITE_SIZE), num_classes, head=head,
                **{**SSDLITE_DEFAULTS, **kwargs})
    return describe(model, "ssdlite320", net.config, SSDLITE_SIZE)


def fasterrcnn_fpn(backbone: str = "mobilenet_v3_large", width: float | None = None, num_classes: int = 91,
                   **options) -> FasterRCNN:
    """torchvision's ``fasterrcnn_mobilenet_v3_large_fpn`` (no pretrained backbone) on our ``backbone``.

    ``backbone.body`` returns the outputs of the last two of torchvision's stages
    (``_mobilenet_extractor(fpn=True)``: ``returned_layers=[num_stages - 2, num_stages - 1]``, both at
    stride 32) as "0" and "1"; ``backbone.fpn`` is a 256-channel ``FeaturePyramidNetwork`` with
    ``LastLevelMaxPool``. Anchors ``((32, 64, 128, 256, 512),) * 3`` with aspect ratios (0.5, 1, 2);
    backbone BatchNorm eps 1e-5. ``options``: ``ModelConfig`` fields for the backbone, the rest to
    torchvision's ``FasterRCNN`` over ``rpn_score_thresh=0.05`` (``min_size``, ``box_score_thresh``...).
    """
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FasterRCNN

    check_num_classes(num_classes)
    min_size = options.get("min_size", FASTERRCNN_MIN_SIZE)
    resolution = min_size[-1] if isinstance(min_size, (tuple, list)) else min_size
    net, kwargs = build_backbone(backbone, width, resolution, {"bn_eps": FASTERRCNN_BN_EPS}, options)
    stages = stage_indices(net)
    body = Taps(net, {stages[-2]: "0", stages[-1]: "1"})
    anchors = AnchorGenerator(FASTERRCNN_ANCHOR_SIZES, FASTERRCNN_ASPECT_RATIOS)
    model = FasterRCNN(FPNBackbone(body), num_classes, rpn_anchor_generator=anchors,
                       **{**FASTERRCNN_DEFAULTS, **kwargs})
    return describe(model, "fasterrcnn_fpn", net.config, resolution)
