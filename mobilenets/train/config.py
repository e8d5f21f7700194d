"""The training configuration: one dataclass whose fields carry their own metadata.

Each field of ``TrainConfig`` is declared once with ``option(...)``: its default, help, group,
choices, range and CLI spelling. Everything else is derived from that declaration: the options of
``mobilenets train`` (``mobilenets/cli/train.py`` builds them from ``OPTIONS``), validation
(``validate``: ranges, choices, finite numbers, then a few cross-field checks), ``config.json``
(``to_dict``/``from_dict``, which also reads the values of earlier versions) and the recipes
(``resolve_config``: defaults <- recipe <- what the user gave). Adding an option is adding a field.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from ..core.errors import UsageError
from ..models.registry import model_config
from .batches import FLIPS
from .optim import OPTIMIZERS
from .recipes import RECIPES, get_recipe
from .schedule import SCHEDULES

GROUPS = ("model", "data", "optimisation", "schedule", "augmentation", "quantization", "system", "evaluation")
TTA_MODES = ("none", "mirror", "mirror-shift")
NORMALIZATIONS = ("data", "cifar10", "cifar100", "imagenet", "weights")


@dataclass(frozen=True)
class Option:
    """What a field means to its users. ``flags``: CLI spellings (default ``--field-name``, and
    ``--x/--no-x`` for booleans); ``shortcut``: an extra flag that sets a fixed value; ``aliases``:
    other spellings of values (CLI words, ``config.json`` of earlier versions); ``off``: a value
    allowed outside the range (``0``: off)."""
    help: str
    group: str | None = None
    flags: tuple[str, ...] = ()
    choices: tuple | None = None
    min: float | None = None
    max: float | None = None
    min_open: bool = False
    max_open: bool = False
    off: Any = None
    aliases: tuple[tuple[Any, Any], ...] = ()
    shortcut: tuple[str, Any, str] | None = None   # (flag, value, help)
    argument: bool = False
    required: bool = False  # the CLI needs it although the library has a default (--data)

    def __post_init__(self):
        if self.group is not None and self.group not in GROUPS:
            raise ValueError(f"unknown option group {self.group!r}")


def option(default, help: str, group: str | None = None, **meta) -> Any:
    return field(default=default, metadata={"option": Option(help, group, **meta)})


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs; ``config.json`` in the run directory is this, resolved."""
    recipe: str = option("default", f"named preset of the options below: {', '.join(RECIPES)}")
    # model
    model: str = option("mobilenet_v3_small", "model name, e.g. mobilenet_v3_small (see `mobilenets list`)",
                        "model", argument=True)
    width: float | None = option(None, "width multiplier (default: the model's)", "model", min=0, min_open=True,
                                 max=4)
    cifar_stem: int = option(0, "how many leading stride-2 layers become stride 1, for small inputs (2: output "
                             "stride 8)", "model", flags=("--stem-layers",), min=0, max=5,
                             aliases=((True, 3), (False, 0)),
                             shortcut=("--cifar-stem", 3, "the seed's CIFAR stem: --stem-layers 3"))
    dropout: float | None = option(None, "dropout before the classifier (default: the model's)", "model", min=0,
                                   max=1, max_open=True)
    weights: str | None = option(None, "fine-tune from this checkpoint or weight source (the classifier is "
                                 "re-initialised if the classes differ)", "model", flags=("--weights", "-w"))
    zero_init_residual: bool = option(False, "from scratch: each residual branch's last BN starts at 0", "model")
    # data
    data: str = option("synthetic", "cifar10:PATH, cifar100:PATH, folder:PATH (train/ [val/]) or synthetic[:N]",
                       "data", required=True)
    resolution: int | None = option(None, "input resolution (default: from the data)", "data", min=8, max=4096)
    preset: str | None = option(None, "preprocessing: cifar or imagenet (default: from the data)", "data",
                                choices=("cifar", "imagenet"))
    normalize: str = option("data", "normalisation mean/std: the data set's own, those of cifar10, cifar100 "
                            "or imagenet, or weights (the --weights model's own)", "data", choices=NORMALIZATIONS)
    val_size: float = option(0.1, "images held out of train/ when there is no val/ (a count, or a fraction < 1)",
                             "data", min=0, min_open=True)
    train_images: int | None = option(None, "train on at most this many images, a seeded sample of the training "
                                      "split (default: all)", "data", min=1)
    seed: int = option(0, "seed of init, shuffling, augmentation and the split", "data", min=0)
    strict: bool = option(False, "an unreadable image is an error, not skipped", "data", flags=("--strict",))
    download: bool = option(True, "download CIFAR when it is not there", "data")
    workers: int = option(2, "data loader workers (folders of large images)", "data", min=0)
    # optimisation
    epochs: int = option(30, "epochs (an upper limit with --time-budget-min)", "optimisation", min=1)
    batch_size: int = option(128, "images per step and process", "optimisation", flags=("--batch-size", "-b"),
                             min=1)
    micro_batch: int = option(0, "run each batch through the model in parts of this many images, gradients "
                              "summed (BN per part; 0: whole batches): a large batch in small memory",
                              "optimisation", min=0)
    optimizer: str = option("sgd", "optimizer", "optimisation", choices=OPTIMIZERS)
    lr: float = option(0.1, "peak learning rate", "optimisation", min=0, min_open=True)
    momentum: float = option(0.9, "momentum (SGD, RMSProp)", "optimisation", min=0, max=1, max_open=True)
    nesterov: bool = option(False, "Nesterov momentum (SGD)", "optimisation")
    weight_decay: float = option(5e-4, "weight decay", "optimisation", min=0)
    no_decay_bn_bias: bool = option(True, "no weight decay on BN weights and biases", "optimisation",
                                    flags=("--no-decay-bn-bias/--decay-bn-bias",))
    no_decay_depthwise: bool = option(False, "no weight decay on depthwise filters (MobileNetV1 paper)",
                                      "optimisation", flags=("--no-decay-depthwise/--decay-depthwise",))
    label_smoothing: float = option(0.0, "label smoothing", "optimisation", min=0, max=1, max_open=True)
    ema_decay: float = option(0.0, "EMA of the weights per step, validated and saved (0: off)", "optimisation",
                              min=0, max=1, max_open=True)
    # schedule
    schedule: str = option("cosine", "learning-rate schedule after the warm-up", "schedule", choices=SCHEDULES)
    warmup_epochs: float = option(0.0, "linear warm-up epochs", "schedule", min=0)
    step_milestones: tuple[float, ...] = option((0.5, 0.75), "step schedule: where the LR is multiplied by "
                                                "--step-gamma, as fractions of the run (< 1) or epoch numbers "
                                                "(>= 1), comma-separated", "schedule", min=0, min_open=True)
    step_gamma: float = option(0.1, "step schedule: the LR factor at each milestone", "schedule", min=0,
                               min_open=True, max=1)
    time_budget_min: float | None = option(None, "fit the run, data loading included, in this many minutes "
                                           "(picks the epochs up to --epochs; 0: none, so a preset runs exactly "
                                           "--epochs)", "schedule", min=0)
    # augmentation
    pad_crop: int = option(4, "zero padding before the random crop, pixels (cifar preset; 0: off)",
                           "augmentation", min=0)
    flip: str = option("random", "horizontal flips: random, alternate (each image mirrored every other epoch) "
                       "or none", "augmentation", choices=FLIPS, aliases=((True, "random"), (False, "none")))
    cutout: int = option(0, "cutout square side in pixels (0: off)", "augmentation", min=0)
    policy: str | None = option(None, "autoaugment or randaugment (none: off)", "augmentation",
                                choices=("autoaugment", "randaugment"), aliases=(("none", None),))
    resize_from: int = option(0, "progressive resizing: train at this size (px) first, growing to full size",
                              "augmentation", min=8, off=0)
    resize_until: float = option(0.5, "progressive resizing: full size from this fraction of the epochs on",
                                 "augmentation", min=0, min_open=True, max=1)
    # quantization
    qat: bool = option(False, "quantization-aware training: fake int8 as --qat-backend's recipe places it, from "
                              "scratch or from --weights; `export --int8` of its checkpoint needs no calibration",
                       "quantization", flags=("--qat",))
    qat_backend: str = option("onnxruntime", "the int8 recipe QAT simulates: onnxruntime (also OpenVINO) or litert",
                              "quantization", choices=("onnxruntime", "openvino", "litert"))
    qat_delay: int = option(0, "QAT: epochs trained in float before the fake quantization switches on, the "
                            "observers watching from the start (TF-slim's --quantize_delay)", "quantization", min=0)
    # system
    device: str = option("auto", "auto (CUDA if present, else CPU), cpu, cuda, cuda:N, mps", "system")
    threads: int | None = option(None, "torch threads per process (default: torch's)", "system", min=1)
    channels_last: bool = option(True, "memory format", "system", flags=("--channels-last/--nchw",))
    bf16: bool | str = option("auto", "bfloat16 autocast of the whole model: auto (where the CPU/GPU has bf16), "
                              "on or off", "system", choices=("auto", True, False),
                              aliases=(("on", True), ("off", False)))
    bf16_pointwise: bool = option(False, "bf16 in the 1x1 convolutions only (where the CPU/GPU has bf16)",
                                  "system", flags=("--bf16-pointwise/--fp32-pointwise",))
    fast_depthwise: bool = option(True, "CPU: depthwise weight gradients by a compiled loop", "system")
    compile: bool = option(False, "torch.compile the training step (the first step compiles, minutes on a CPU)",
                           "system")
    keep_memory: bool = option(True, "CPU: malloc keeps freed memory (no page faults per step; the process keeps "
                               "its peak size)", "system")
    output: str | None = option(None, "run directory (default runs/train/MODEL)", "system",
                                flags=("--output", "-o"))
    # evaluation
    tta: str = option("none", "validation views: none, mirror (each image and its mirror) or mirror-shift (also "
                      "shifted 1 px both ways)", "evaluation", choices=TTA_MODES,
                      aliases=((True, "mirror"), (False, "none")))
    val_every: int = option(1, "validate epoch 1, every N-th epoch and the last", "evaluation", min=1)
    eval_batch_size: int = option(100, "images per validation batch", "evaluation", min=1)

    def __post_init__(self):
        for name in OPTIONS:  # other spellings of values (CLI words, earlier config.json) in canonical form
            object.__setattr__(self, name, coerce(name, getattr(self, name)))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["step_milestones"] = list(self.step_milestones)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """A config from ``config.json`` (unknown keys ignored, earlier spellings read), not validated."""
        return cls(**{k: v for k, v in d.items() if k in OPTIONS})

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)


OPTIONS: dict[str, Option] = {f.name: f.metadata["option"] for f in dataclasses.fields(TrainConfig)}
TYPES: dict[str, Any] = typing.get_type_hints(TrainConfig)


def flag(name: str) -> str:
    """The CLI spelling of field ``name``, as messages name it (``--val-every``)."""
    opt = OPTIONS[name]
    return opt.flags[0].split("/")[0] if opt.flags else "--" + name.replace("_", "-")


def cli_flags(name: str) -> tuple[str, ...]:
    """The option declarations of field ``name`` (``--x/--no-x`` for a boolean unless declared)."""
    opt, dashed = OPTIONS[name], flag(name)
    return opt.flags or ((f"{dashed}/--no-{dashed[2:]}",) if cli_type(name) is bool else (dashed,))


def cli_type(name: str) -> type:
    """The type the command line reads for field ``name``: text for lists and for fields with choices
    (their words map through the aliases), else the field's value type."""
    if OPTIONS[name].choices is not None or typing.get_origin(TYPES[name]) is tuple:
        return str
    return _kind(name)[0]


def spelled(name: str, value) -> str:
    """``value`` of field ``name`` as the command line spells it (``--nchw``, ``on``, ``15,20,30``)."""
    for alias, canonical in OPTIONS[name].aliases:
        if isinstance(alias, str) and type(canonical) is type(value) and canonical == value:
            return alias
    if isinstance(value, bool):
        switches = cli_flags(name)[0].split("/")
        return switches[0] if value else switches[1] if len(switches) > 1 else "off"
    if isinstance(value, (list, tuple)):
        return ",".join(f"{v:g}" for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return "unset" if value is None else str(value)


def coerce(name: str, value):
    """``value`` of field ``name`` in its canonical form: aliases resolved (an exact type match, so
    ``1`` is not ``True``), a comma-separated string or list as a tuple of numbers."""
    for alias, canonical in OPTIONS[name].aliases:
        if type(value) is type(alias) and value == alias:
            return canonical
    if TYPES[name] == tuple[float, ...] and value is not None:
        items = value.split(",") if isinstance(value, str) else value
        try:
            return tuple(float(v) for v in items)
        except (TypeError, ValueError):
            raise UsageError(f"{flag(name)} takes numbers separated by commas, got {value!r}") from None
    return value


def _kind(name: str) -> tuple[type, bool]:
    """(the type of field ``name``'s values: bool, int, float or str; whether None is allowed).
    A tuple field holds floats; ``bool | str`` (bf16) is checked by its choices."""
    hint = TYPES[name]
    args = set(typing.get_args(hint)) if typing.get_origin(hint) in (typing.Union, types.UnionType) else {hint}
    kinds = {typing.get_origin(a) or a for a in args} - {type(None)}
    kind = float if tuple in kinds else next(k for k in (bool, int, float, str) if k in kinds)
    return kind, type(None) in args


def _is(kind: type, v) -> bool:
    if kind is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    return isinstance(v, kind) and (kind is bool or not isinstance(v, bool))


def range_text(opt: Option) -> str:
    """The range of ``opt`` as its messages and help say it: "> 0", "in [0, 1)", "0 (off) or >= 8"."""
    lo = None if opt.min is None else f"{'>' if opt.min_open else '>='} {opt.min:g}"
    hi = None if opt.max is None else f"{'<' if opt.max_open else '<='} {opt.max:g}"
    if lo and hi:
        text = f"in {'(' if opt.min_open else '['}{opt.min:g}, {opt.max:g}{')' if opt.max_open else ']'}"
    else:
        text = lo or hi or ""
    return f"{opt.off} (off) or {text}" if opt.off is not None else text


def _check_field(name: str, value) -> None:
    opt, what, (kind, optional) = OPTIONS[name], flag(name), _kind(name)
    if value is None:
        if not optional:
            raise UsageError(f"{what} needs a value")
    elif opt.choices is not None:
        if not any(type(value) is type(c) and value == c for c in opt.choices):
            shown = ", ".join(spelled(name, c) for c in opt.choices)
            raise UsageError(f"{what} must be one of {shown}, got {value!r}")
    elif typing.get_origin(TYPES[name]) is tuple and not isinstance(value, tuple):
        raise UsageError(f"{what} takes a list of numbers, got {value!r}")
    else:
        for v in value if isinstance(value, tuple) else (value,):
            if not _is(kind, v):
                words = {bool: "true or false", int: "an integer", float: "a number", str: "text"}[kind]
                raise UsageError(f"{what} must be {words}, got {v!r}")
            if kind in (int, float):
                _check_number(opt, what, v)


def _check_number(opt: Option, what: str, v: float) -> None:
    if not math.isfinite(v):
        raise UsageError(f"{what} must be a finite number, got {v}")
    low = opt.min is not None and (v <= opt.min if opt.min_open else v < opt.min)
    high = opt.max is not None and (v >= opt.max if opt.max_open else v > opt.max)
    if (low or high) and not (opt.off is not None and v == opt.off):
        raise UsageError(f"{what} must be {range_text(opt)}, got {v}")


def validate(cfg: TrainConfig) -> TrainConfig:
    """``cfg``, after checking every field against its metadata and the fields against each other."""
    for name in OPTIONS:
        _check_field(name, getattr(cfg, name))
    if cfg.micro_batch and cfg.batch_size % cfg.micro_batch:
        raise UsageError(f"micro-batch {cfg.micro_batch} does not divide the batch size {cfg.batch_size}")
    if isinstance(cfg.val_size, float) and cfg.val_size >= 1 and not cfg.val_size.is_integer():
        raise UsageError(f"--val-size must be a fraction < 1 or a whole count, got {cfg.val_size}")
    if cfg.qat_delay and (not cfg.qat or cfg.qat_delay >= cfg.epochs):
        raise UsageError(f"--qat-delay {cfg.qat_delay} needs --qat and fewer epochs of delay than --epochs "
                         f"({cfg.epochs})")
    if cfg.normalize == "weights" and not cfg.weights:
        raise UsageError("--normalize weights takes the mean/std of the --weights model: pass --weights")
    model_config(cfg.model, cfg.width, cifar_stem=cfg.cifar_stem, dropout=cfg.dropout)  # a known name, its width
    return cfg


def recipe_values(name: str) -> dict:
    """The field values of recipe ``name`` (defaults <- the recipe)."""
    return TrainConfig.from_dict({**TrainConfig().to_dict(), **get_recipe(name), "recipe": name}).to_dict()


def resolve_config(recipe: str = "default", **overrides) -> TrainConfig:
    """Defaults <- the named recipe <- ``overrides`` (``None`` values mean "not given"), validated."""
    values = recipe_values(recipe)
    unknown = [k for k in overrides if k not in OPTIONS]
    if unknown:
        raise UsageError(f"unknown training option(s): {', '.join(unknown)}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    if values["qat"] and overrides.get("channels_last") is None:
        values["channels_last"] = False  # QAT trains NCHW (train.qat.check)
    return validate(TrainConfig.from_dict(values))
