"""What an exported model computes: its task, its named outputs, its input, and what the export
promises for it.

``task_of(model)`` describes a model given to ``export`` (a ``Task``):

* "classification": our ``MobileNet``; one output, ``logits`` (N x classes). Every format, int8 too.
* "backbone": our ``FeatureNet`` (``create_model(name, features_only=True)``); one output per
  feature map, ``feature0`` ... ``featureK`` in ``feature_info``'s order (names by position, not by
  stride: at an output stride of 8 or 16, several maps share a stride). Every format, fp32.
* "lraspp", "deeplabv3" (and "fcn"): torchvision's segmentation models (what our segmentation
  builders return); one output, ``out``: N x classes x H x W logits at the input's size. The
  auxiliary head is for training and is left out. Every format, fp32, at a fixed square input.
* "ssdlite320", "fasterrcnn_fpn" (a plain torchvision ``SSD`` / ``FasterRCNN``: "ssd",
  "fasterrcnn"): torchvision's detectors; input one image ``3 x H x W``, float in [0, 1]; outputs
  ``boxes`` (K x 4: x1, y1, x2, y2 in input pixels), ``scores`` (K), ``labels`` (K, int64), the
  resize, normalisation and post-processing (box decoding, NMS) inside the file. ONNX only, fp32,
  batch 1, exported with the TorchScript exporter (torch.export cannot trace the data-dependent
  post-processing).

The task name is the model's ``task`` attribute when it has one (our builders set it), else the
class's. The input resolution of a segmenter or detector is its ``resolution`` attribute when it
has one, else torchvision's own (detectors: the transform's size) or 520 (segmenters).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from ..core.errors import UsageError
from ..core.preprocessing import Preprocessing, default_preprocessing, preprocessing_of
from ..models.backbone import FeatureNet
from ..models.meta import CheckpointMeta
from ..models.network import MobileNet, ModelConfig, unwrap
from .graph import output_list, torchvision_kind

SEGMENTATION_RESOLUTION = 520  # torchvision's segmentation references evaluate at 520 pixels
DETECTION_OUTPUTS = ("boxes", "scores", "labels")
MIN_DENSE_RESOLUTION = 32  # the stride of the last map of torchvision's MobileNetV3 backbones
DETECTION_FORMATS = ("onnx",)


@dataclass(frozen=True)
class Task:
    """A model as export sees it. ``kind``: "classification", "backbone", "segmentation" or
    "detection"; ``name``: the sidecar's ``task``; ``outputs``: the names of the file's outputs, in
    order; ``config``: our network's config (a segmenter's or detector's backbone, when known);
    ``fields``: what the sidecar adds about the outputs (a backbone's ``feature_info``)."""

    name: str
    kind: str
    outputs: tuple[str, ...]
    in_chans: int = 3
    resolution: int = 224
    min_resolution: int = MIN_DENSE_RESOLUTION
    config: ModelConfig | None = None
    meta: CheckpointMeta | None = None
    fields: dict = field(default_factory=dict)

    @property
    def formats(self) -> tuple[str, ...] | None:
        """The export formats it is written in (None: every one)."""
        return DETECTION_FORMATS if self.kind == "detection" else None

    @property
    def input_layout(self) -> str:
        return "CHW" if self.kind == "detection" else "NCHW"

    @property
    def convert_options(self) -> dict:
        """What the converter is told besides the output names (detectors: the TorchScript exporter)."""
        return {"dynamo": False} if self.kind == "detection" else {}

    def check(self, fmt: str, *, precision: str, nhwc: bool, batch) -> None:
        """What this task cannot be exported as: a one-line ``UsageError`` before any work."""
        if self.kind == "classification":
            return
        what = {"backbone": "a backbone", "segmentation": f"the {self.name} segmenter",
                "detection": f"the {self.name} detector"}[self.kind]
        if self.formats is not None and fmt not in self.formats:
            raise UsageError(f"{what} exports to {' or '.join(self.formats)} only (with its post-processing), "
                             f"not {fmt}")
        if precision != "fp32":
            raise UsageError(f"{what} exports in fp32, not {precision} (int8 and its top-1 check are for classifiers)")
        if self.kind == "detection" and (nhwc or batch != 1):
            raise UsageError(f"{what} takes one 3 x H x W image: batch 1, no NHWC input")

    def example(self, batch: int, res: int, nhwc: bool) -> torch.Tensor:
        """The input the converters trace: N x C x H x W (N x H x W x C), a detector's one C x H x W image."""
        if self.kind == "detection":
            return structured_images(1, res)[0]
        return torch.zeros((batch, res, res, self.in_chans) if nhwc else (batch, self.in_chans, res, res))

    def preprocessing(self, res: int) -> Preprocessing:
        """How images become the file's input: the classifier's or backbone's recorded preprocessing;
        a segmenter's ImageNet normalisation on the image resized to ``res``; a detector's plain
        [0, 1] pixels (it resizes and normalises inside)."""
        pre = getattr(self.meta, "preprocessing", None)
        if self.kind in ("classification", "backbone"):
            return pre.at(res) if pre is not None else default_preprocessing(
                res, cifar_stem=self.config.cifar_stem if self.config is not None else 0)
        base = default_preprocessing(res)
        if self.kind == "detection":
            return replace(base, crop_pct=1.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
        return replace(base, crop_pct=1.0)

    def stem(self) -> str:
        """The start of an export's default file name: ``mobilenet_v2-w0.35`` (a classifier),
        ``mobilenet_v2-w0.35-features`` (a backbone), ``lraspp-mobilenet_v3_large-w1.0`` (a segmenter
        or detector on our network), ``lraspp`` (on torchvision's)."""
        variant = getattr(self.meta, "variant", None) or (self.config.family if self.config else None)
        network = f"{variant}-w{float(self.config.width)!r}" if self.config is not None and variant else None
        if self.kind == "classification":
            return network
        if self.kind == "backbone":
            return f"{network}-features"
        return f"{self.name}-{network}" if network else self.name

    def sidecar(self, module: nn.Module, example: torch.Tensor, dynamic: bool) -> dict:
        """The sidecar's ``task``, ``outputs`` (names), ``output_shapes`` (``None`` for a dimension
        that varies: a dynamic batch, a detector's count of boxes) and the task's own fields."""
        with torch.inference_mode():
            shapes = [list(t.shape) for t in output_list(module(example))]
        for shape in shapes:
            if shape and (dynamic or self.kind == "detection"):
                shape[0] = None
        own = {} if self.kind == "classification" else {"class_names": None}  # a classifier's names only
        return {"task": self.name, "outputs": list(self.outputs), "output_shapes": shapes, **own, **self.fields}

    def reference(self, model: nn.Module, x: np.ndarray) -> list[np.ndarray]:
        """The PyTorch model's outputs on ``x`` (N x C x H x W; a detector: one C x H x W image), in
        the order of ``outputs``, as arrays."""
        t = torch.from_numpy(np.ascontiguousarray(x))
        with torch.inference_mode():
            value = model.eval()([t]) if self.kind == "detection" else model.eval()(t)
        return [o.detach().cpu().numpy() for o in output_list(value)]


CLASSIFICATION = Task("classification", "classification", ("logits",))


def task_of(model) -> Task:
    """The ``Task`` of a model given to ``export`` (a model name or file: a classifier, resolved
    later); a module of no task here is a one-line ``UsageError``."""
    task = find_task(model)
    if task is None:
        raise UsageError(f"export takes mobilenets models (MobileNet, FeatureNet) and torchvision's LR-ASPP, "
                         f"DeepLabV3, SSD and Faster R-CNN, not {type(unwrap(model)).__name__}")
    return task


def find_task(model) -> Task | None:
    """``task_of``, with None for a module of no task here (a peer implementation)."""
    model = unwrap(model) if isinstance(model, nn.Module) else model
    if not isinstance(model, nn.Module):
        return CLASSIFICATION
    if isinstance(model, MobileNet):
        config = model.config
        return Task("classification", "classification", ("logits",), config.in_chans, config.resolution,
                    config.total_stride, config, model.checkpoint_meta)
    if isinstance(model, FeatureNet):
        info = model.feature_info
        fields = {"feature_info": {"channels": list(info.channels()), "reductions": list(info.reduction()),
                                   "modules": list(info.module_name()), "out_indices": list(info.out_indices)}}
        meta = model.checkpoint_meta or CheckpointMeta(model.config.family, model.config)
        if meta.preprocessing is None:
            meta = replace(meta, preprocessing=preprocessing_of(model))
        return Task("backbone", "backbone", tuple(f"feature{i}" for i in range(len(info.out_indices))),
                    model.config.in_chans, model.config.resolution, model.config.total_stride, model.config, meta,
                    fields)
    kind = torchvision_kind(model)
    if kind is None:
        return None
    config = getattr(model, "backbone_config", None)
    config = config if isinstance(config, ModelConfig) else None
    name = getattr(model, "task", None) or _class_task(model)
    meta = CheckpointMeta(config.family if config else None, config)
    if kind == "segmentation":
        res = getattr(model, "resolution", None) or SEGMENTATION_RESOLUTION
        return Task(name, kind, ("out",), config.in_chans if config else 3, int(res), MIN_DENSE_RESOLUTION, config,
                    meta)
    res = getattr(model, "resolution", None) or _detector_size(model)
    return Task(name, kind, DETECTION_OUTPUTS, 3, int(res), MIN_DENSE_RESOLUTION, config, meta,
                {"box_format": "xyxy", "post_processing": True})


def _class_task(model: nn.Module) -> str:
    """A torchvision model's task by its class: lraspp, deeplabv3, fcn, ssd, fasterrcnn."""
    return type(model).__name__.lower()


def _detector_size(model: nn.Module) -> int:
    """The side of the images a torchvision detector resizes to: SSD's fixed size, Faster R-CNN's
    shorter side (``min_size``)."""
    transform = model.transform
    if getattr(transform, "fixed_size", None):
        return int(max(transform.fixed_size))
    return int(transform.min_size[-1])


def structured_images(n: int, res: int, seed: int = 0) -> torch.Tensor:
    """``n`` deterministic test images, N x 3 x res x res in [0, 1]: smooth gradients with bright
    rectangles and discs on them (objects with edges for a detector to find), not noise."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, res), torch.linspace(0, 1, res), indexing="ij")
    images = []
    for _ in range(n):
        tint = torch.rand(3, 1, 1, generator=g)
        img = 0.25 + 0.3 * tint * (xs + ys)[None] / 2
        for _ in range(4):
            x0, y0 = (torch.rand(2, generator=g) * 0.7).tolist()
            w, h = (0.15 + torch.rand(2, generator=g) * 0.3).tolist()
            color = torch.rand(3, 1, 1, generator=g)
            if torch.rand(1, generator=g).item() < 0.5:
                inside = (xs >= x0) & (xs < x0 + w) & (ys >= y0) & (ys < y0 + h)
            else:
                inside = (xs - x0 - w / 2) ** 2 + (ys - y0 - h / 2) ** 2 < (min(w, h) / 2) ** 2
            img = torch.where(inside[None], color.expand(3, res, res), img)
        images.append(img.clamp(0, 1))
    return torch.stack(images).float()
