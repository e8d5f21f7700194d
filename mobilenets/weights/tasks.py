"""Classifier weights into task models: a detection or segmentation model (``models.detection``,
``models.segmentation``) whose backbone starts from the weights ``create_model`` loads."""
from __future__ import annotations

import os
from collections.abc import Callable

from torch import nn

from ..models.taps import CONFIG_OPTIONS, load_trunk
from .pretrained import create_model

# ModelConfig fields that shape a checkpoint's network beyond family and width (channel rules,
# padding, MobileNeXt's shortcut): the task's backbone takes them from the loaded classifier.
ARCHITECTURE = ("stem_scaled", "expand_rule", "head_rule", "tf_same", "identity_mult")


def with_backbone(builder: Callable[..., nn.Module], backbone: str, width: float | None, num_classes: int,
                  pretrained_backbone: bool | str | os.PathLike = False, **options) -> nn.Module:
    """``builder(backbone, width, num_classes, **options)``; with ``pretrained_backbone`` (True, a source
    tag or a checkpoint path, as ``create_model``'s ``pretrained``) its backbone carries the weights of
    ``create_model(backbone, pretrained=pretrained_backbone, width=width, **backbone options)``, the
    classifier's own tensors dropped. Weights that do not fit raise ``UsageError``."""
    if not pretrained_backbone:
        return builder(backbone, width, num_classes, **options)
    classifier = create_model(backbone, pretrained=pretrained_backbone, width=width,
                              **{k: v for k, v in options.items() if k in CONFIG_OPTIONS})
    config = classifier.config
    arch = {k: getattr(config, k) for k in ARCHITECTURE}
    model = builder(backbone, config.width, num_classes, **{**arch, **options})
    load_trunk(model, classifier.state_dict(), what=f"the {backbone} weights {pretrained_backbone}")
    return model
