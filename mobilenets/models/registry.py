"""Names -> models, with the published figures of every variant.

``build_model`` builds an architecture by name; ``mobilenets.create_model`` (in ``weights``) is the
public entry point that adds weights and metadata (the call shape users know from timm).
Published MACs, params and ImageNet top-1 come from the source tables, cited per family.
"""
from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass

from ..core.errors import UsageError
from .network import MobileNet, ModelConfig
from .specs import FAMILIES


@dataclass(frozen=True)
class Variant:
    name: str
    family: str
    width: float
    resolution: int = 224
    macs_m: float | None = None     # published million MACs at ``resolution``
    params_m: float | None = None   # published million parameters (1000 classes)
    top1: float | None = None       # published ImageNet top-1 (%)
    source: str = ""


def _tag(x: float) -> str:
    return f"{round(x * 100):03d}"


_V1_SRC = "TF-slim v1 (seed 001)"
_V1 = [  # width, resolution, MACs (M), params (M), top-1 (%)
    (1.0, 224, 569, 4.24, 70.9),
    (1.0, 192, 418, 4.24, 70.0),
    (1.0, 160, 291, 4.24, 68.0),
    (1.0, 128, 186, 4.24, 65.2),
    (0.75, 224, 317, 2.59, 68.4),
    (0.75, 192, 233, 2.59, 67.2),
    (0.75, 160, 162, 2.59, 65.3),
    (0.75, 128, 104, 2.59, 62.1),
    (0.5, 224, 150, 1.34, 63.3),
    (0.5, 192, 110, 1.34, 61.7),
    (0.5, 160, 77, 1.34, 59.1),
    (0.5, 128, 49, 1.34, 56.3),
    (0.25, 224, 41, 0.47, 49.8),
    (0.25, 192, 34, 0.47, 47.7),
    (0.25, 160, 21, 0.47, 45.5),
    (0.25, 128, 14, 0.47, 41.5),
]
_V2_SRC = "TF-slim v2 table"
_V2 = [
    (1.4, 224, 582, 6.06, 75.0),
    (1.3, 224, 509, 5.34, 74.4),
    (1.0, 224, 300, 3.47, 71.8),
    (1.0, 192, 221, 3.47, 70.7),
    (1.0, 160, 154, 3.47, 68.8),
    (1.0, 128, 99, 3.47, 65.3),
    (1.0, 96, 56, 3.47, 60.3),
    (0.75, 224, 209, 2.61, 69.8),
    (0.75, 192, 153, 2.61, 68.7),
    (0.75, 160, 107, 2.61, 66.4),
    (0.75, 128, 69, 2.61, 63.2),
    (0.75, 96, 39, 2.61, 58.8),
    (0.5, 224, 97, 1.95, 65.4),
    (0.5, 192, 71, 1.95, 63.9),
    (0.5, 160, 50, 1.95, 61.0),
    (0.5, 128, 32, 1.95, 57.7),
    (0.5, 96, 18, 1.95, 51.2),
    (0.35, 224, 59, 1.66, 60.3),
    (0.35, 192, 43, 1.66, 58.2),
    (0.35, 160, 30, 1.66, 55.7),
    (0.35, 128, 20, 1.66, 50.8),
    (0.35, 96, 11, 1.66, 45.5),
]
_V3_SRC = "V3 paper; top-1 TF-slim"  # MACs/params: arXiv:1905.02244 Table 3
_V3 = [
    ("mobilenet_v3_large", 1.0, 217, 5.4, 75.6),
    ("mobilenet_v3_large", 0.75, 155, 4.0, 73.3),
    ("mobilenet_v3_large_minimal", 1.0, 209, 3.9, 72.3),
    ("mobilenet_v3_small", 1.0, 56, 2.5, 68.1),
    ("mobilenet_v3_small", 0.75, 44, 2.0, 65.4),
    ("mobilenet_v3_small_minimal", 1.0, None, 2.0, 61.9),
]
_MNEXT_SRC = "MobileNeXt (seed 003)"
_MNEXT = [(1.4, 590, 6.1, 76.1), (1.0, 300, 3.5, 74.02), (0.75, 210, 2.5, 72.0),
          (0.5, 110, 2.1, 67.7), (0.35, 80, 1.8, 64.7)]

# arXiv:2404.10518, ImageNet-1k classification table: resolution, MACs (M), params (M), top-1 (%).
_V4_SRC = "MobileNetV4 paper (arXiv:2404.10518)"
_V4 = [
    ("mobilenet_v4_conv_small", 224, 200, 3.8, 73.8),
    ("mobilenet_v4_conv_medium", 256, 1000, 9.2, 79.9),
    ("mobilenet_v4_conv_large", 384, 5900, 31.0, 82.9),
    ("mobilenet_v4_hybrid_medium", 256, 1200, 10.5, 80.7),
    ("mobilenet_v4_hybrid_large", 384, 7200, 35.9, 83.4),
]


def _build_variants() -> dict[str, Variant]:
    v4 = {family: Variant(family, family, 1.0, r, macs, params, top1, _V4_SRC) for family, r, macs, params, top1 in _V4}
    out: list[Variant] = [v4.get(f, Variant(f, f, 1.0)) for f in FAMILIES]
    for family, table, source in (("mobilenet_v1", _V1, _V1_SRC), ("mobilenet_v2", _V2, _V2_SRC)):
        for w, r, macs, params, top1 in table:
            name = f"{family}_{_tag(w)}" + ("" if r == 224 else f"_{r}")
            out.append(Variant(name, family, w, r, macs, params, top1, source))
    for family, w, macs, params, top1 in _V3:
        out.append(Variant(f"{family}_{_tag(w)}", family, w, 224, macs, params, top1, _V3_SRC))
    for w, macs, params, top1 in _MNEXT:
        out.append(Variant(f"mobilenext_{_tag(w)}", "mobilenext", w, 224, macs, params, top1, _MNEXT_SRC))
    return {v.name: v for v in out}


VARIANTS: dict[str, Variant] = _build_variants()


def list_models(pattern: str = "*") -> list[str]:
    """Variant names matching ``pattern``, in registry order.

    A shell pattern matches a whole name or any part of it that starts after an underscore, so
    ``"v3*"`` finds every ``mobilenet_v3_*`` as ``"mobilenet_v3*"`` does; a pattern without
    wildcards matches as a substring (``"mobilenext"``, ``"_075"``). Case is ignored.
    """
    pat = pattern.strip().lower()
    if not any(c in pat for c in "*?["):
        return [n for n in VARIANTS if pat in n]
    return [n for n in VARIANTS if any(fnmatch.fnmatchcase(part, pat) for part in _tails(n))]


def _tails(name: str) -> list[str]:
    """``"a_b_c"`` -> ``["a_b_c", "b_c", "c"]``: the parts of a name a pattern may start at."""
    parts = name.split("_")
    return ["_".join(parts[i:]) for i in range(len(parts))]


def match_models(pattern: str = "*") -> list[str]:
    """``list_models(pattern)``, which must name at least one variant (else a ``UsageError``)."""
    names = list_models(pattern)
    if not names:
        raise UsageError(f"no model matches {pattern!r}; `mobilenets list` shows them all")
    return names


def get_variant(name: str) -> Variant:
    """The registry entry for ``name``; unknown names get the closest suggestions."""
    if name in VARIANTS:
        return VARIANTS[name]
    close = difflib.get_close_matches(name, VARIANTS, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see `mobilenets list`"
    raise UsageError(f"unknown model {name!r}{hint}")


def model_config(name: str, width: float | None = None, resolution: int | None = None, **kwargs) -> ModelConfig:
    """The ``ModelConfig`` that ``create_model`` would build (no weights, no module)."""
    v = get_variant(name)
    if width is not None and v.name != v.family and width != v.width:
        raise UsageError(f"{name} has width {v.width}; pass width only with the base name {v.family!r}")
    return ModelConfig(family=v.family, width=v.width if width is None else width,
                       resolution=v.resolution if resolution is None else resolution, **kwargs)


def build_model(name: str, width: float | None = None, num_classes: int = 1000, resolution: int | None = None,
                **kwargs) -> MobileNet:
    """The architecture ``name`` with freshly initialised weights and no metadata: loading weights
    and saying how to feed the model (``checkpoint_meta``) is the loaders' job
    (``mobilenets.create_model`` in ``weights`` builds on this).

    ``build_model("mobilenet_v2", width=0.5, num_classes=10)``; ``build_model("mobilenet_v1_025_128")``.
    Other options: ``in_chans``, ``dropout``, ``cifar_stem``, ``tf_same``, ``bn_eps``,
    ``identity_mult`` (MobileNeXt).
    """
    return MobileNet(model_config(name, width, resolution, num_classes=num_classes, **kwargs))
