"""MobileNets as backbones: ``features_only`` in timm's semantics, a view of the same network.

``features(model, out_indices)`` returns a ``FeatureNet`` (``taps.Taps`` returning a list) that
shares ``model``'s stem, blocks and (for MobileNetV3, whose last 1x1 conv is a stage of its own)
head, and returns the feature maps ``model.feature_info`` records: the end of each stride. Its
state dict keys are the classifier's (``stem.*``, ``blocks.*``, ``head.*``), so classification
checkpoints load into it with only the classifier left out. ``FeatureInfo`` answers what timm's
does (``channels()``, ``reduction()``, ``module_name()``, ``get_dicts()``, indexing), so code
written for timm backbones runs unchanged.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..core.errors import UsageError
from .network import MobileNet
from .taps import Taps, named_layers

DEFAULT_OUT_INDICES = (0, 1, 2, 3, 4)


class FeatureInfo:
    """The chosen feature maps of a backbone: channels, reduction (input pixels per output pixel)
    and module name of each, as timm's ``FeatureInfo``."""

    def __init__(self, info: list[dict], out_indices: Sequence[int]):
        self.info = [dict(d) for d in info]
        self.out_indices = tuple(out_indices)

    def get(self, key: str, idx: int | Sequence[int] | None = None):
        if idx is None:
            return [self.info[i][key] for i in self.out_indices]
        if isinstance(idx, (tuple, list)):
            return [self.info[i][key] for i in idx]
        return self.info[idx][key]

    def channels(self, idx=None):
        return self.get("num_chs", idx)

    def reduction(self, idx=None):
        return self.get("reduction", idx)

    def module_name(self, idx=None):
        return self.get("module", idx)

    def get_dicts(self, keys: Sequence[str] | None = None, idx=None) -> list[dict]:
        chosen = self.out_indices if idx is None else (idx if isinstance(idx, (tuple, list)) else [idx])
        return [{k: self.info[i][k] for k in (keys or self.info[i])} for i in chosen]

    def __getitem__(self, item):
        return self.info[item]

    def __len__(self) -> int:
        return len(self.info)

    def __repr__(self) -> str:
        return f"FeatureInfo(channels={self.channels()}, reduction={self.reduction()})"


def check_out_indices(out_indices: Sequence[int] | None, available: int) -> tuple[int, ...]:
    """``out_indices`` as positive indices into ``available`` feature points, checked (negative
    indices count from the end, as in timm)."""
    chosen = DEFAULT_OUT_INDICES[:available] if out_indices is None else out_indices
    if isinstance(chosen, int):  # timm: an int n means the last n
        chosen = tuple(range(available - chosen, available)) if 0 < chosen <= available else (chosen,)
    out = []
    for i in chosen:
        if isinstance(i, bool) or not isinstance(i, int) or not -available <= i < available:
            raise UsageError(f"out_indices {tuple(chosen)}: this backbone has {available} feature maps "
                             f"(indices 0 to {available - 1}, or negative from the end)")
        out.append(i % available)
    if not out or len(set(out)) != len(out) or out != sorted(out):
        raise UsageError(f"out_indices must be distinct and in increasing order, got {tuple(chosen)}")
    return tuple(out)


class FeatureNet(Taps):
    """A MobileNet's feature maps at ``out_indices``: ``forward(x)`` returns a list of tensors,
    ``feature_info`` says what each is. Layers after the last chosen map are kept (so weights
    converted from timm's features models pair one for one) but not run."""

    def __init__(self, model: MobileNet, out_indices: Sequence[int] | None = None):
        info = FeatureInfo(model.feature_info, check_out_indices(out_indices, len(model.feature_info)))
        order = [name for name, _ in named_layers(model)]
        super().__init__(model, {order.index(info.module_name(i)): str(i) for i in info.out_indices},
                         head=model.config.spec.head_in_features)
        self.feature_info = info
        self.checkpoint_meta = model.checkpoint_meta

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(super().forward(x).values())


def features(model: MobileNet, out_indices: Sequence[int] | None = None) -> FeatureNet:
    """``model`` as a backbone returning the feature maps at ``out_indices`` (default: all five)."""
    return FeatureNet(model, out_indices)
