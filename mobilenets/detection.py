"""Object detection on any MobileNet: torchvision's SSDLite and Faster R-CNN + FPN with our backbones.

``ssdlite320("mobilenet_v2", width=0.5, num_classes=3, pretrained_backbone=True)`` returns
torchvision's ``SSD``, ``fasterrcnn_fpn(...)`` its ``FasterRCNN``: train and run them as torchvision's
(a list of images; in training mode, also a list of targets with ``boxes`` and ``labels``). The
architectures are ``models.detection``'s; ``weights.convert`` turns torchvision's own
``ssdlite320_mobilenet_v3_large`` and ``fasterrcnn_mobilenet_v3_large_fpn`` weights into them.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .models import detection as arch
from .weights.tasks import with_backbone

if TYPE_CHECKING:
    from torchvision.models.detection.faster_rcnn import FasterRCNN
    from torchvision.models.detection.ssd import SSD

__all__ = ["fasterrcnn_fpn", "ssdlite320"]


def ssdlite320(backbone: str = "mobilenet_v3_large", width: float | None = None, num_classes: int = 91, *,
               pretrained_backbone: bool | str | os.PathLike = False, reduced_tail: bool | None = None,
               **options) -> SSD:
    """SSDLite at 320x320 on ``backbone`` (``models.detection.ssdlite320``, which says what is built).

    ``pretrained_backbone``: False, or the classifier weights to start the backbone from (True for the
    default checkpoint, a source tag, or a checkpoint path: ``create_model``'s ``pretrained``).
    ``reduced_tail`` None: True for MobileNetV3 without pretrained weights, else False (torchvision's
    ``reduce_tail = weights_backbone is None``). ``options``: backbone ``ModelConfig`` fields and
    torchvision ``SSD`` arguments.
    """
    if reduced_tail is None and pretrained_backbone:
        reduced_tail = False
    return with_backbone(arch.ssdlite320, backbone, width, num_classes, pretrained_backbone,
                         reduced_tail=reduced_tail, **options)


def fasterrcnn_fpn(backbone: str = "mobilenet_v3_large", width: float | None = None, num_classes: int = 91, *,
                   pretrained_backbone: bool | str | os.PathLike = False, **options) -> FasterRCNN:
    """Faster R-CNN with a feature pyramid on ``backbone`` (``models.detection.fasterrcnn_fpn``).

    ``pretrained_backbone`` as for ``ssdlite320``. ``options``: backbone ``ModelConfig`` fields and
    torchvision ``FasterRCNN`` arguments (``min_size``, ``max_size``, ``box_score_thresh``...).
    """
    return with_backbone(arch.fasterrcnn_fpn, backbone, width, num_classes, pretrained_backbone, **options)
