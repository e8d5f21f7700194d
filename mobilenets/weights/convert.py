"""Reference weights -> our ``MobileNet``: torchvision, timm and Keras applications.

Two halves, kept apart so that each can be read on its own:

* **Which model to build.** ``source_options`` says which ``ModelConfig`` options reproduce a
  source (BatchNorm eps, TF "same" padding, the channel rules at widths other than 1.0);
  ``config_for`` turns a registry name into that full ``ModelConfig``. Each rule cites the
  reference code it copies.
* **Which tensor goes where.** Every source is read into one flat list of tensors in execution
  order, each tagged with its kind (``conv.weight``, ``bn.running_var``, ``linear.bias``...) and
  already in PyTorch layout (Keras kernels are transposed here). Our own state dict is read the
  same way, and the two lists are paired one by one. A pair must agree in kind and in shape, or
  ``UsageError`` names both tensors and both shapes; tensors left over on either side are listed.
  The only kind change allowed is a 1x1 convolution used as a dense layer (timm's ``conv_head``,
  Keras V1 ``conv_preds`` and V3 ``conv_2``/``logits``) into our ``nn.Linear``.

A third part converts torchvision's MobileNetV3 detection and segmentation models (``TASKS``) into
ours (``models.detection``, ``models.segmentation``): the backbone pairs as above, the heads, the
same torchvision classes on both sides, by key.

Keras is imported only on the Keras path: it is a test/dev dependency, not a runtime one.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from ..core.errors import UsageError
from ..models import detection, segmentation
from ..models.backbone import FeatureNet, features
from ..models.layers import make_divisible
from ..models.network import MobileNet, ModelConfig
from ..models.registry import model_config
from ..models.taps import trunk_prefix

SOURCES = ("torchvision", "timm", "keras")

V3_FAMILIES = ("mobilenet_v3_large", "mobilenet_v3_small", "mobilenet_v3_large_minimal",
               "mobilenet_v3_small_minimal")
V4_FAMILIES = ("mobilenet_v4_conv_small", "mobilenet_v4_conv_medium", "mobilenet_v4_conv_large",
               "mobilenet_v4_hybrid_medium", "mobilenet_v4_hybrid_large")
# Families each source implements (torchvision has no minimalistic V3, nobody but us has MobileNeXt).
SOURCE_FAMILIES = {
    "torchvision": ("mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"),
    "timm": ("mobilenet_v1", "mobilenet_v2") + V3_FAMILIES + V4_FAMILIES,
    "keras": ("mobilenet_v1", "mobilenet_v2") + V3_FAMILIES,
}

TF_BN_EPS = 1e-3     # TF/Keras BatchNormalization default, timm's BN_EPS_TF_DEFAULT
TORCH_BN_EPS = 1e-5  # nn.BatchNorm2d default


# --------------------------------------------------------------------------- which model to build

def source_options(source: str, family: str, width: float = 1.0, tf: bool = False) -> dict:
    """The ``ModelConfig`` options that make our ``family`` at ``width`` compute what ``source`` does.

    ``tf`` (timm only): the ``tf_*`` ports of TF checkpoints (BN eps 1e-3, TF "same" padding).
    Raises ``UsageError`` for combinations whose architecture our options cannot express.
    """
    source = _check_source(source)
    if family not in SOURCE_FAMILIES[source]:
        raise UsageError(f"{source} has no {family}; it provides: {', '.join(SOURCE_FAMILIES[source])}")
    v3 = family in V3_FAMILIES
    if source == "torchvision":
        # torchvision/models/mobilenetv2.py: plain nn.BatchNorm2d, symmetric padding,
        #   stem _make_divisible(32 * w), last_channel _make_divisible(1280 * max(1.0, w)).
        # torchvision/models/mobilenetv3.py: BatchNorm2d(eps=0.001), stem = first block's
        #   adjust_channels(16, w), expanded = adjust_channels(exp, w), classifier hidden
        #   adjust_channels(1280 or 1024, w) at every width.
        if v3:
            return dict(bn_eps=TF_BN_EPS, tf_same=False, stem_scaled=True, expand_rule="scale", head_rule="scale")
        return dict(bn_eps=TORCH_BN_EPS, tf_same=False, stem_scaled=True, expand_rule="ratio",
                    head_rule="keep_for_thin")
    if source == "timm":
        # timm/models/efficientnet.py _gen_mobilenet_v1/_v2 and timm/models/mobilenetv3.py
        # _gen_mobilenet_v3: BN eps from resolve_bn_args (nn default; tf_* set BN_EPS_TF_DEFAULT and
        # pad_type="same"), mid = make_divisible(in_chs * exp_ratio), V2 num_features
        # max(1280, round(1280 * w)), V3 fix_stem = w < 0.75 and num_features 1280/1024 at every width;
        # _gen_mobilenet_v4: fix_stem = w < 1.0, num_features 1280 at every width.
        _check_timm_expressible(family, width)
        if family in V4_FAMILIES:
            return dict(bn_eps=TF_BN_EPS if tf else TORCH_BN_EPS, tf_same=bool(tf), head_rule="keep_for_thin",
                        stem_scaled=width >= 1.0)
        return dict(bn_eps=TF_BN_EPS if tf else TORCH_BN_EPS, tf_same=bool(tf), expand_rule="ratio",
                    head_rule="keep_for_thin", stem_scaled=width >= 0.75 if v3 else True)
    # keras/src/applications/mobilenet.py: BatchNormalization() (eps 1e-3), "same" stem, ZeroPadding2D
    #   ((0,1),(0,1)) + "valid" on stride-2 depthwise convs (= TF "same" on even sizes), int(c * alpha).
    # mobilenet_v2.py: eps 1e-3, correct_pad + "valid" (= TF "same"), stem _make_divisible(32 * alpha),
    #   last 1280 unless alpha > 1.
    # mobilenet_v3.py: eps 1e-3, stem Conv2D(16) at every alpha, expand _depth(infilters * expansion),
    #   last_conv _depth(6 * channels), last_point_ch 1280/1024 unless alpha > 1.
    if family == "mobilenet_v1" and 32 * width < 8:
        raise UsageError(f"Keras MobileNet uses int(c * alpha) channels, ours never fewer than 8: "
                         f"alpha {width} < 0.25 cannot be converted")
    return dict(bn_eps=TF_BN_EPS, tf_same=True, stem_scaled=not v3, expand_rule="ratio", head_rule="keep_for_thin")


def _check_timm_expressible(family: str, width: float) -> None:
    """Raise for the widths at which timm's channel rules differ from every option of ours."""
    if family == "mobilenet_v1":
        # timm rounds V1 channels with make_divisible(c * w), TF-slim/Keras (and we) with int(c * w).
        bad = [c for c in (32, 64, 128, 256, 512, 1024) if make_divisible(c * width) != max(int(c * width), 8)]
        if bad:
            raise UsageError(f"timm rounds MobileNetV1 channels to multiples of 8, ours (TF-slim, Keras) "
                             f"takes int(c * width): they differ at width {width} (channels {bad})")
    if family in V4_FAMILIES and width > 1:
        raise UsageError(f"timm keeps the {family} pre-logits layer at 1280 channels at every width, ours "
                         f"scales it for width > 1: width {width} cannot be converted from timm")
    if family in V3_FAMILIES:
        if width > 1:
            raise UsageError(f"timm keeps the {family} pre-logits layer at {1280 if 'large' in family else 1024} "
                             f"channels at every width, ours scales it for width > 1 (as Keras and TF do): "
                             f"width {width} cannot be converted from timm")
        last, head = (160, 960) if "large" in family else (96, 576)
        if make_divisible(head * width) != 6 * make_divisible(last * width):
            # timm's last "cn" block has round(head * w) channels, ours (TF, Keras, torchvision) 6 * round(last * w).
            raise UsageError(f"timm's {family} last 1x1 conv has {make_divisible(head * width)} channels at width "
                             f"{width}, ours (like TF, Keras and torchvision) {6 * make_divisible(last * width)}")


def config_for(source: str, name: str, width: float | None = None, *, tf: bool | None = None,
               **kwargs) -> ModelConfig:
    """The ``ModelConfig`` to build our ``name`` with so that it reproduces ``source``.

    ``name`` is a registry name (``"mobilenet_v2_140"``, or a family name with ``width=``);
    ``tf`` picks timm's ``tf_*`` ports; other keyword arguments go to ``model_config``
    (``num_classes``, ``resolution``... and any option given here overrides the source's).
    """
    source = _check_source(source)
    if tf is not None and source != "timm":
        raise UsageError("tf= applies to timm only (torchvision is never TF-style, Keras always is)")
    base = model_config(name, width=width, **kwargs)  # checks the name, the width and the options given
    opts = source_options(source, base.family, base.width, tf=bool(tf))
    return base.replace(**{k: v for k, v in opts.items() if k not in kwargs})


# --------------------------------------------------------------------------- which tensor goes where

@dataclass
class Entry:
    """One tensor in PyTorch layout: where it came from, what it is (``layer.part``), its value."""
    key: str
    kind: str
    tensor: torch.Tensor


def torch_entries(state_dict: Mapping[str, torch.Tensor]) -> list[Entry]:
    """A PyTorch state dict as entries, module by module in registration (= execution) order.

    A module with running stats is a BatchNorm; otherwise a 4-d weight is a conv, a 2-d one
    a linear layer. ``num_batches_tracked`` is skipped (inference never reads it).
    """
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        prefix, _, part = key.rpartition(".")
        if part == "num_batches_tracked":
            continue
        if not isinstance(value, torch.Tensor):
            raise UsageError(f"state dict entry {key!r} is a {type(value).__name__}, not a tensor")
        modules.setdefault(prefix, {})[part] = value
    entries = []
    for prefix, params in modules.items():
        weight = params.get("weight")
        if "running_mean" in params:
            layer = "bn"
        elif weight is not None and weight.ndim == 4:
            layer = "conv"
        elif weight is not None and weight.ndim == 2:
            layer = "linear"
        else:
            layer = "other"
        for part, value in params.items():
            entries.append(Entry(f"{prefix}.{part}" if prefix else part, f"{layer}.{part}", value))
    return entries


def keras_entries(model) -> list[Entry]:
    """A Keras model's weights as entries, layer by layer in graph order, in PyTorch layout.

    Conv2D kernel (kh, kw, in, out) -> (out, in, kh, kw); DepthwiseConv2D (kh, kw, in, mult) ->
    (in * mult, 1, kh, kw); Dense (in, out) -> (out, in); BatchNormalization gamma, beta,
    moving_mean, moving_variance -> weight, bias, running_mean, running_var.
    """
    entries: list[Entry] = []
    for layer in model.layers:
        if hasattr(layer, "layers"):           # a model nested in the model
            entries.extend(keras_entries(layer))
            continue
        if not layer.weights:
            continue
        values = {_keras_var_name(v): torch.from_numpy(a.copy()).float()
                  for v, a in zip(layer.weights, layer.get_weights(), strict=True)}
        kind = type(layer).__name__
        if kind == "BatchNormalization":
            names = dict(gamma="weight", beta="bias", moving_mean="running_mean", moving_variance="running_var")
            missing = [k for k in names if k not in values]
            if missing:
                raise UsageError(f"Keras BatchNormalization {layer.name!r} has no {', '.join(missing)} "
                                 "(center/scale off): not a MobileNet layer")
            entries += [Entry(f"{layer.name}/{k}", f"bn.{p}", values[k]) for k, p in names.items()]
            continue
        if kind == "Conv2D":
            layer_kind, weight = "conv", values.pop("kernel").permute(3, 2, 0, 1)
        elif kind == "DepthwiseConv2D":
            k = values.pop("kernel", None)
            k = values.pop("depthwise_kernel") if k is None else k
            kh, kw, cin, mult = k.shape
            layer_kind, weight = "conv", k.permute(2, 3, 0, 1).reshape(cin * mult, 1, kh, kw)
        elif kind == "Dense":
            layer_kind, weight = "linear", values.pop("kernel").t()
        else:
            raise UsageError(f"Keras layer {layer.name!r} ({kind}) has weights but is not a MobileNet layer")
        entries.append(Entry(f"{layer.name}/kernel", f"{layer_kind}.weight", weight.contiguous()))
        if "bias" in values:
            entries.append(Entry(f"{layer.name}/bias", f"{layer_kind}.bias", values.pop("bias")))
        if values:
            raise UsageError(f"Keras layer {layer.name!r} has unexpected weights: {', '.join(values)}")
    return entries


def _keras_var_name(v) -> str:
    # Keras 3: v.name == "kernel"; tf.keras 2: "conv1/kernel:0".
    return v.name.split("/")[-1].split(":")[0]


def _adapt(ref: Entry, our_kind: str) -> torch.Tensor | None:
    """The reference tensor as ``our_kind`` wants it, or None when the kinds cannot pair."""
    if ref.kind == our_kind:
        return ref.tensor
    r_layer, r_part = ref.kind.split(".", 1)
    o_layer, o_part = our_kind.split(".", 1)
    if r_part == o_part and r_layer == "conv" and o_layer == "linear":   # a 1x1 conv used as a dense layer
        if r_part == "bias":
            return ref.tensor
        if ref.tensor.ndim == 4 and ref.tensor.shape[2:] == (1, 1):
            return ref.tensor.flatten(1)
    return None


_DESCRIBE = {"conv": "conv", "bn": "BatchNorm", "linear": "linear", "other": "unrecognised"}


def _describe(kind: str) -> str:
    layer, part = kind.split(".", 1)
    return f"{_DESCRIBE[layer]} {part}"


def _listing(entries: list[Entry], limit: int = 8) -> str:
    shown = ", ".join(f"{e.key} {tuple(e.tensor.shape)}" for e in entries[:limit])
    return shown + (f" ... and {len(entries) - limit} more" if len(entries) > limit else "")


def match(ref: list[Entry], ours: list[Entry], what: str) -> dict[str, torch.Tensor]:
    """Pair reference and our entries in order: {our key: tensor}; any disagreement raises.

    ``what`` names the conversion in messages (``"torchvision weights -> mobilenet_v2 (width 0.5)"``).
    """
    counts = f"the reference has {len(ref)} tensors, ours {len(ours)}"
    out: dict[str, torch.Tensor] = {}
    for i, (r, o) in enumerate(zip(ref, ours, strict=False)):  # lengths compared below
        value = _adapt(r, o.kind)
        if value is None:
            raise UsageError(
                f"cannot convert {what}: reference {r.key!r} ({_describe(r.kind)}, shape {tuple(r.tensor.shape)}) "
                f"lines up with our {o.key!r} ({_describe(o.kind)}, shape {tuple(o.tensor.shape)}) at tensor "
                f"#{i}; {counts}. Is the reference another family or width?")
        if value.shape != o.tensor.shape:
            raise UsageError(
                f"cannot convert {what}: reference {r.key!r} has shape {tuple(r.tensor.shape)}"
                + (f" ({tuple(value.shape)} in PyTorch layout)" if tuple(value.shape) != tuple(r.tensor.shape) else "")
                + f" but our {o.key!r} needs {tuple(o.tensor.shape)} (tensor #{i}, {_describe(o.kind)}); "
                f"{counts}. Is the reference another family or width?")
        out[o.key] = value.detach().to(dtype=o.tensor.dtype).clone()
    if len(ref) != len(ours):
        n = min(len(ref), len(ours))
        if len(ref) > n:
            detail = f"unexpected reference tensors with no place in ours: {_listing(ref[n:])}"
        else:
            detail = f"our tensors missing from the reference: {_listing(ours[n:])}"
        raise UsageError(f"cannot convert {what}: {counts}; {detail}")
    return out


# --------------------------------------------------------------------------- the entry point

def convert(reference, source: str, name: str, *, width: float | None = None, tf: bool | None = None,
            features_only: bool = False, out_indices=None, **kwargs) -> MobileNet | FeatureNet:
    """Our ``name`` carrying the weights of a reference implementation.

    ``features_only``: the reference is a backbone (timm's ``features_only=True`` model, or its
    state dict); the result is our ``FeatureNet`` at ``out_indices``.
    ``reference``: a torchvision or timm state dict or model (``source="torchvision"``/``"timm"``),
    or a Keras model (``source="keras"``). ``tf`` (timm): whether it is a ``tf_*`` port; read from a
    timm model's ``pretrained_cfg``, False for a bare state dict unless given. ``num_classes`` (and
    ``in_chans``) default to the reference's. Other keyword arguments go to ``model_config``.
    The chosen options are on the returned model's ``config``; the model is in training mode, as
    ``create_model`` returns it. A name in ``TASKS`` (torchvision's MobileNetV3 detection and
    segmentation models) converts a whole task model: ``convert_task``.
    """
    source = _check_source(source)
    if name in TASKS:
        if tf is not None or features_only or out_indices is not None:
            raise UsageError(f"{name} is a whole task model: tf, features_only and out_indices do not apply")
        return convert_task(reference, source, name, width=width, **kwargs)
    if source == "keras":
        if not _is_keras_model(reference):
            raise UsageError("source='keras' needs a Keras model (keras.applications.MobileNet...), "
                             f"got a {type(reference).__name__}")
        ref = keras_entries(reference)
    else:
        if _is_keras_model(reference):
            raise UsageError(f"this is a Keras model: convert it with source='keras', not {source!r}")
        if source == "timm" and tf is None and isinstance(reference, nn.Module):
            tf = _timm_is_tf(reference)
        state = _state_dict(reference, source)
        ref = torch_entries(timm_order(state) if source == "timm" else state)
    if not ref:
        raise UsageError(f"the {source} reference has no tensors")
    weights = [e for e in ref if e.kind in ("conv.weight", "linear.weight")]
    if weights and not features_only:
        kwargs.setdefault("num_classes", int(weights[-1].tensor.shape[0]))
        if weights[0].kind == "conv.weight":
            kwargs.setdefault("in_chans", int(weights[0].tensor.shape[1]))
    config = config_for(source, name, width, tf=tf, **kwargs)
    model = MobileNet(config)
    if features_only:
        model = features(model, out_indices)
    what = f"{source}{' (tf_*)' if tf else ''} weights -> {name} (width {config.width})"
    state = model.state_dict()
    state.update(match(ref, torch_entries(state), what))
    model.load_state_dict(state)
    return model


def _check_source(source: str) -> str:
    if source not in SOURCES:
        raise UsageError(f"unknown source {source!r}; known: {', '.join(SOURCES)}")
    return source


def _is_keras_model(obj) -> bool:
    # With the torch backend a Keras model is also an nn.Module: tell them apart by the Keras API.
    return not isinstance(obj, Mapping) and hasattr(obj, "layers") and hasattr(obj, "get_weights")


# The order in which timm's MobileNet modules register their children (timm/models/efficientnet.py,
# mobilenetv3.py, _efficientnet_blocks.py), each with the child that tells it apart: a safetensors
# file stores its tensors sorted by name, and the pairing above needs execution order back.
_TIMM_CHILDREN = (
    ("conv_stem", ("conv_stem", "bn1", "blocks", "conv_head", "norm_head", "bn2", "classifier")),  # the network
    ("conv_exp", ("conv_exp", "bn1", "se", "conv_pwl", "bn2")),                                    # EdgeResidual
    ("conv_pwl", ("conv_pw", "bn1", "conv_dw", "bn2", "aa", "se", "conv_pwl", "bn3")),  # InvertedResidual
    ("conv_dw", ("conv_dw", "bn1", "aa", "se", "conv_pw", "bn2")),                      # DepthwiseSeparable
    ("conv_reduce", ("conv_reduce", "conv_expand")),                                    # SqueezeExcite
    ("pw_proj", ("dw_start", "pw_exp", "dw_mid", "se", "pw_proj", "dw_end", "layer_scale")),  # UIR (MobileNetV4)
    ("attn", ("norm", "attn", "layer_scale")),                                          # MobileAttention
    ("query", ("query", "key", "value", "output")),                                     # MultiQueryAttention2d
    ("down_conv", ("down_conv", "norm", "proj")),                                       # its key / value
    ("conv", ("conv", "bn1", "bn")),                                                    # ConvBnAct, ConvNormAct
)
_PARAMS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def timm_order(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A timm MobileNet state dict in the order timm's modules hold their tensors, whatever order it
    came in (a safetensors file's is alphabetical): numbered children by number, named ones by
    ``_TIMM_CHILDREN``, parameters as PyTorch registers them. A name outside those tables keeps its
    place relative to the others (sorted last among its siblings, by name)."""
    children: dict[str, set[str]] = {}
    for key in state_dict:
        parts = key.split(".")
        for i in range(len(parts) - 1):
            children.setdefault(".".join(parts[:i]), set()).add(parts[i])

    def rank(parent: str, name: str) -> tuple:
        if name.isdigit():
            return (0, int(name), "")
        siblings = children.get(parent, set())
        for marker, order in _TIMM_CHILDREN:
            if marker in siblings and name in order:
                return (0, order.index(name), "")
        return (1, 0, name)

    def key_rank(key: str) -> tuple:
        parts = key.split(".")
        path = tuple(rank(".".join(parts[:i]), p) for i, p in enumerate(parts[:-1]))
        last = parts[-1]
        return (*path, (0, _PARAMS.index(last), "") if last in _PARAMS else (1, 0, last))

    return {k: state_dict[k] for k in sorted(state_dict, key=key_rank)}


def _state_dict(reference, source: str) -> Mapping[str, torch.Tensor]:
    if isinstance(reference, Mapping):
        return reference
    if hasattr(reference, "state_dict") and callable(reference.state_dict):
        return reference.state_dict()
    raise UsageError(f"source={source!r} needs a state dict or a torch model, got a {type(reference).__name__}")


def _timm_is_tf(model: nn.Module) -> bool:
    """Whether a timm model is a ``tf_*`` port: its architecture name, else its BatchNorm eps."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    arch = cfg.get("architecture") if isinstance(cfg, Mapping) else None
    if arch:
        return arch.startswith("tf_")
    bn = next((m for m in model.modules() if isinstance(m, nn.BatchNorm2d)), None)
    return bn is not None and abs(bn.eps - TF_BN_EPS) < 1e-9


# --------------------------------------------------------------------------- task models

@dataclass(frozen=True)
class Task:
    """One of torchvision's MobileNetV3 task models as ours: ``builder`` (``models.detection`` or
    ``models.segmentation``) with ``options`` (those torchvision's builder uses), on ``backbone``.
    ``trunk``: the key prefix of torchvision's MobileNet layers (its ``features``); every other tensor
    sits under the same key in ours (the same torchvision classes). ``num_classes``: (key, divisor)
    reading it off a state dict; ``flags``: options set True where a key with that prefix exists."""
    builder: Callable[..., nn.Module]
    backbone: str
    trunk: str
    num_classes: tuple[str, int]
    options: dict = field(default_factory=dict)
    flags: dict = field(default_factory=dict)


_V3L = "mobilenet_v3_large"
# SSD's class logits: num_classes per box, DefaultBoxGenerator([2, 3]) puts 2 + 2 * 2 boxes at each location.
_SSD_CLASSES = ("head.classification_head.module_list.0.1.bias", 6)
_FRCNN_CLASSES = ("roi_heads.box_predictor.cls_score.bias", 1)
TASKS: dict[str, Task] = {
    # ssdlite.py: reduce_tail = weights_backbone is None
    "ssdlite320_mobilenet_v3_large": Task(detection.ssdlite320, _V3L, "backbone.features.", _SSD_CLASSES,
                                          {"reduced_tail": True}),
    "fasterrcnn_mobilenet_v3_large_fpn": Task(detection.fasterrcnn_fpn, _V3L, "backbone.body.", _FRCNN_CLASSES),
    # faster_rcnn.py fasterrcnn_mobilenet_v3_large_320_fpn: the same model at low resolution
    "fasterrcnn_mobilenet_v3_large_320_fpn": Task(
        detection.fasterrcnn_fpn, _V3L, "backbone.body.", _FRCNN_CLASSES,
        {"min_size": 320, "max_size": 640, "rpn_pre_nms_top_n_test": 150, "rpn_post_nms_top_n_test": 150}),
    "lraspp_mobilenet_v3_large": Task(segmentation.lraspp, _V3L, "backbone.", ("classifier.low_classifier.bias", 1)),
    "deeplabv3_mobilenet_v3_large": Task(segmentation.deeplabv3, _V3L, "backbone.", ("classifier.4.bias", 1),
                                         flags={"aux_loss": "aux_classifier."}),
}


def convert_task(reference, source: str, name: str, *, width: float | None = None, **kwargs) -> nn.Module:
    """Our ``TASKS[name]`` model carrying the weights of torchvision's model ``name`` (a state dict or
    the model): built with torchvision's options and channel rules, ``num_classes`` (and DeepLab's
    ``aux_loss``) read off the weights; ``kwargs`` override. The backbone tensors pair in execution
    order (``match``), the heads' by key; a tensor left over on either side raises ``UsageError``."""
    if source != "torchvision":
        raise UsageError(f"{name} is torchvision's model: convert it with source='torchvision', not {source!r}")
    task = TASKS[name]
    state = _state_dict(reference, source)
    key, per_class = task.num_classes
    if key not in state:
        raise UsageError(f"this is not torchvision's {name}: it has no {key!r}")
    options = dict(task.options, num_classes=int(state[key].shape[0]) // per_class)
    options.update({flag: any(k.startswith(prefix) for k in state) for flag, prefix in task.flags.items()})
    width = 1.0 if width is None else width
    # torchvision's channel rules; BatchNorm eps is the task builder's (Faster R-CNN's 1e-5, not V3's 1e-3).
    options.update(width=width, **{k: v for k, v in source_options(source, task.backbone, width).items()
                                   if k != "bn_eps"})
    model = task.builder(task.backbone, **{**options, **kwargs})

    ours = model.state_dict()
    prefix = trunk_prefix(model)
    what = f"torchvision weights -> {name} (width {model.backbone_config.width})"
    loaded = match(torch_entries({k: v for k, v in state.items() if k.startswith(task.trunk)}),
                   torch_entries({k: v for k, v in ours.items() if k.startswith(prefix)}), what)
    heads = {k: v for k, v in state.items() if not k.startswith(task.trunk)}
    our_heads = {k: v for k, v in ours.items() if not k.startswith(prefix)}
    _check_same_keys(heads, our_heads, what)
    loaded.update({k: v.detach().to(dtype=our_heads[k].dtype).clone() for k, v in heads.items() if k in our_heads})
    ours.update(loaded)
    model.load_state_dict(ours)
    return model


def _check_same_keys(ref: Mapping[str, torch.Tensor], ours: Mapping[str, torch.Tensor], what: str) -> None:
    """The heads' tensors, paired by key: any key on one side only, or another shape, raises."""
    def counted(d):  # FrozenBatchNorm2d (torchvision's trained Faster R-CNN) keeps no batch count
        return {k for k in d if not k.endswith("num_batches_tracked")}
    extra, missing = sorted(counted(ref) - counted(ours)), sorted(counted(ours) - counted(ref))
    wrong = [f"{k} {tuple(v.shape)} (ours {tuple(ours[k].shape)})" for k, v in ref.items()
             if k in ours and v.shape != ours[k].shape]
    problems = ([f"unexpected reference tensors {', '.join(extra[:8])}"] if extra else []) \
        + ([f"missing from the reference: {', '.join(missing[:8])}"] if missing else []) \
        + ([f"shapes differ: {', '.join(wrong[:8])}"] if wrong else [])
    if problems:
        raise UsageError(f"cannot convert {what}: {'; '.join(problems)}")
