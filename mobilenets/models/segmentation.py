"""Segmentation models on any of our MobileNets, with torchvision's own heads (architecture only).

``lraspp`` is torchvision's ``lraspp_mobilenet_v3_large`` and ``deeplabv3`` its
``deeplabv3_mobilenet_v3_large``, with our network where torchvision's dilated MobileNetV3 sits
(``output_stride=16, dilation_rule="torchvision"``: its ``dilated=True``). Loading weights is the
``mobilenets.segmentation`` layer's. torchvision's segmentation package is imported on first use.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torchvision.models.segmentation.deeplabv3 import DeepLabV3
    from torchvision.models.segmentation.lraspp import LRASPP

from ..core.errors import UsageError
from .network import MobileNet
from .taps import Taps, build_backbone, check_num_classes, describe, set_bn, stage_indices

RESOLUTION = 520  # the resize of torchvision's SemanticSegmentation preset for these weights
DILATED = {"output_stride": 16, "dilation_rule": "torchvision"}
# torchvision's MobileNetV3 default norm layer: partial(nn.BatchNorm2d, eps=0.001, momentum=0.01); its
# eps is our V3 default already. Other families keep ours.
V3_BN_MOMENTUM = 0.01


def _backbone(backbone: str, width: float | None, num_classes: int, options: dict) -> tuple[MobileNet, dict]:
    check_num_classes(num_classes)
    net, kwargs = build_backbone(backbone, width, RESOLUTION, DILATED, options)
    set_bn(net, V3_BN_MOMENTUM if net.config.family.startswith("mobilenet_v3") else None)
    return net, kwargs


def lraspp(backbone: str = "mobilenet_v3_large", width: float | None = None, num_classes: int = 21,
           **options) -> LRASPP:
    """torchvision's ``lraspp_mobilenet_v3_large`` on our ``backbone``, as ``_lraspp_mobilenetv3`` builds
    it: "low" is the output of the layer at ``stage_indices[-4]`` (the FIRST block of the stride-8
    stage), "high" that of the last layer (stride 16). ``options``: ``ModelConfig`` fields for the
    backbone (over ``output_stride=16, dilation_rule="torchvision"``), the rest to ``LRASPP``
    (``inter_channels``). ``width`` None: the backbone name's own (1.0 for a family name)."""
    from torchvision.models.segmentation.lraspp import LRASPP

    net, kwargs = _backbone(backbone, width, num_classes, options)
    stages = stage_indices(net)
    body = Taps(net, {stages[-4]: "low", stages[-1]: "high"})
    model = LRASPP(body, body.channels["low"], body.channels["high"], num_classes, **kwargs)
    return describe(model, "lraspp", net.config, RESOLUTION)


def deeplabv3(backbone: str = "mobilenet_v3_large", width: float | None = None, num_classes: int = 21,
              aux_loss: bool = False, **options) -> DeepLabV3:
    """torchvision's ``deeplabv3_mobilenet_v3_large`` on our ``backbone``, as ``_deeplabv3_mobilenetv3``
    builds it: ``DeepLabHead`` on "out" (the last layer, stride 16) and, with ``aux_loss``, an
    ``FCNHead`` on "aux" (the layer at ``stage_indices[-4]``, stride 8). ``options``: ``ModelConfig``
    fields for the backbone (over ``output_stride=16, dilation_rule="torchvision"``)."""
    from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3
    from torchvision.models.segmentation.fcn import FCNHead

    net, kwargs = _backbone(backbone, width, num_classes, options)
    if kwargs:
        raise UsageError(f"deeplabv3 takes no options {', '.join(kwargs)}")
    stages = stage_indices(net)
    body = Taps(net, {stages[-1]: "out", **({stages[-4]: "aux"} if aux_loss else {})})
    aux = FCNHead(body.channels["aux"], num_classes) if aux_loss else None
    model = DeepLabV3(body, DeepLabHead(body.channels["out"], num_classes), aux)
    return describe(model, "deeplabv3", net.config, RESOLUTION)
