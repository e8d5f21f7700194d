"""Semantic segmentation on any MobileNet: torchvision's LR-ASPP and DeepLabV3 with our backbones.

``lraspp("mobilenet_v3_small", num_classes=2, pretrained_backbone=True)`` returns torchvision's
``LRASPP``, ``deeplabv3(...)`` its ``DeepLabV3``: both map a batch of images to ``{"out": logits}``
(``"aux"`` too for DeepLabV3 with ``aux_loss=True``) at the input's size. The architectures are
``models.segmentation``'s; ``weights.convert`` turns torchvision's own ``lraspp_mobilenet_v3_large``
and ``deeplabv3_mobilenet_v3_large`` weights into them.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .models import segmentation as arch
from .weights.tasks import with_backbone

if TYPE_CHECKING:
    from torchvision.models.segmentation.deeplabv3 import DeepLabV3
    from torchvision.models.segmentation.lraspp import LRASPP

__all__ = ["deeplabv3", "lraspp"]


def lraspp(backbone: str = "mobilenet_v3_large", width: float | None = None, num_classes: int = 21, *,
           pretrained_backbone: bool | str | os.PathLike = False, **options) -> LRASPP:
    """LR-ASPP on ``backbone`` dilated to output stride 16 (``models.segmentation.lraspp``).

    ``pretrained_backbone``: False, or the classifier weights to start the backbone from (True for the
    default checkpoint, a source tag, or a checkpoint path: ``create_model``'s ``pretrained``).
    ``options``: backbone ``ModelConfig`` fields and ``LRASPP``'s ``inter_channels``.
    """
    return with_backbone(arch.lraspp, backbone, width, num_classes, pretrained_backbone, **options)


def deeplabv3(backbone: str = "mobilenet_v3_large", width: float | None = None, num_classes: int = 21,
              aux_loss: bool = False, *, pretrained_backbone: bool | str | os.PathLike = False,
              **options) -> DeepLabV3:
    """DeepLabV3 on ``backbone`` dilated to output stride 16, with an ``FCNHead`` at stride 8 when
    ``aux_loss`` (``models.segmentation.deeplabv3``). ``pretrained_backbone`` as for ``lraspp``;
    ``options``: backbone ``ModelConfig`` fields."""
    return with_backbone(arch.deeplabv3, backbone, width, num_classes, pretrained_backbone,
                         aux_loss=aux_loss, **options)
