"""Reference weights -> our models: same logits as torchvision, timm and Keras (offline, random weights).

Each reference is randomly initialised, its BatchNorm statistics are set from one training-mode batch
and then perturbed, its gammas, betas and every conv/linear bias are randomised (the libraries start
them at 1/0, which would hide swapped or misplaced tensors), and its classifier is rescaled so the
logits have unit spread: the 1e-4 tolerance is then relative too, and a single misplaced BN tensor
moves the logits by ~0.5. Inputs are 100x100 (100 -> 50 -> 25 -> 13 -> 7 -> 4: odd sizes reach stride-2
convs, where TF "same" padding is symmetric, even ones where it is not) except Keras MobileNet V1
(96, see test_keras).
"""
import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from mobilenets import UsageError, convert
from mobilenets.weights.convert import config_for, source_options

TOL = 1e-4
RES = 100


def _x(res: int = RES) -> torch.Tensor:
    return torch.randn(2, 3, res, res, generator=torch.Generator().manual_seed(0))


def _randomize_torch(model: nn.Module, x: torch.Tensor, seed: int = 1) -> None:
    """Running stats near the true ones (activations stay O(1), so every tensor counts), then perturbed."""
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    with torch.no_grad():
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # a plain average: one train-mode batch sets the statistics
        model.train()
        model(x)
        for m, momentum in zip(bns, momenta, strict=True):
            n = m.num_features
            m.momentum = momentum
            m.weight.copy_(torch.rand(n, generator=g) * 0.45 + 0.8)
            m.bias.copy_(torch.randn(n, generator=g) * 0.2)
            m.running_mean += torch.randn(n, generator=g) * 0.1 * m.running_var.sqrt()
            m.running_var *= torch.rand(n, generator=g) * 0.45 + 0.8
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    model.eval()


def _prepare_torch(ref: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Randomise, rescale the classifier to unit-spread logits, return the reference logits."""
    _randomize_torch(ref, x)
    classifier = [m for m in ref.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        bias = classifier.bias.clone()
        classifier.bias.zero_()
        classifier.weight /= ref(x).std()
        classifier.bias.copy_(bias)
        return ref(x)


def _assert_close(ours, x, expected):
    ours.eval()
    with torch.no_grad():
        got = ours(x)
    assert got.shape == expected.shape
    assert 0.5 < expected.std() < 2  # the comparison is meaningful: logits are not ~0
    diff = (got - expected).abs().max().item()
    assert diff <= TOL, f"max |logit diff| {diff:.2e}"


# --------------------------------------------------------------------------- torchvision

TORCHVISION = [
    # torchvision builder, its kwargs, our name, convert kwargs
    ("mobilenet_v2", {}, "mobilenet_v2", {}),
    ("mobilenet_v2", {"width_mult": 0.5}, "mobilenet_v2_050", {}),
    ("mobilenet_v3_large", {}, "mobilenet_v3_large", {}),
    ("mobilenet_v3_large", {"width_mult": 0.5}, "mobilenet_v3_large", {"width": 0.5}),
    ("mobilenet_v3_small", {}, "mobilenet_v3_small", {}),
    ("mobilenet_v3_small", {"width_mult": 0.75}, "mobilenet_v3_small_075", {}),
]


@pytest.mark.parametrize("builder,tv_kwargs,name,kwargs", TORCHVISION,
                         ids=[f"{b}-{kw.get('width_mult', 1.0)}" for b, kw, *_ in TORCHVISION])
def test_torchvision(builder, tv_kwargs, name, kwargs):
    ref = getattr(torchvision.models, builder)(num_classes=10, **tv_kwargs)
    x = _x()
    expected = _prepare_torch(ref, x)
    ours = convert(ref.state_dict(), "torchvision", name, **kwargs)
    assert ours.config.num_classes == 10  # inferred from the classifier
    v3 = "v3" in builder
    assert ours.config.bn_eps == (1e-3 if v3 else 1e-5) and not ours.config.tf_same
    if v3:
        assert (ours.config.expand_rule, ours.config.head_rule, ours.config.stem_scaled) == ("scale", "scale", True)
    _assert_close(ours, x, expected)


# --------------------------------------------------------------------------- timm

TIMM = [
    # timm name, our name, convert kwargs
    ("mobilenetv1_100", "mobilenet_v1_100", {}),
    ("mobilenetv1_125", "mobilenet_v1", {"width": 1.25}),
    ("mobilenetv2_035", "mobilenet_v2_035", {}),
    ("mobilenetv2_075", "mobilenet_v2_075", {}),
    ("mobilenetv2_100", "mobilenet_v2_100", {}),
    ("mobilenetv2_140", "mobilenet_v2_140", {}),
    ("mobilenetv3_large_100", "mobilenet_v3_large", {}),
    ("mobilenetv3_large_075", "mobilenet_v3_large_075", {}),
    ("mobilenetv3_small_050", "mobilenet_v3_small", {"width": 0.5}),   # stem fixed at 16 (width < 0.75)
    ("mobilenetv3_small_100", "mobilenet_v3_small", {}),
    ("tf_mobilenetv3_large_100", "mobilenet_v3_large", {}),
    ("tf_mobilenetv3_large_075", "mobilenet_v3_large_075", {}),
    ("tf_mobilenetv3_small_100", "mobilenet_v3_small", {}),
    ("tf_mobilenetv3_large_minimal_100", "mobilenet_v3_large_minimal", {}),
    ("tf_mobilenetv3_small_minimal_100", "mobilenet_v3_small_minimal", {}),
]


@pytest.mark.parametrize("timm_name,name,kwargs", TIMM, ids=[t[0] for t in TIMM])
def test_timm(timm_name, name, kwargs):
    timm = pytest.importorskip("timm")
    ref = timm.create_model(timm_name, pretrained=False, num_classes=10)
    x = _x()
    expected = _prepare_torch(ref, x)
    tf = timm_name.startswith("tf_")
    # A timm state dict does not say whether it is a tf_* port: the model object does (pretrained_cfg).
    ours = convert(ref, "timm", name, **kwargs)
    assert (ours.config.bn_eps, ours.config.tf_same) == ((1e-3, True) if tf else (1e-5, False))
    _assert_close(ours, x, expected)
    if tf:  # the same from the state dict, told tf=True
        _assert_close(convert(ref.state_dict(), "timm", name, tf=True, **kwargs), x, expected)


def test_timm_state_dict_needs_tf_flag_to_match_tf_ports():
    """Wrong BN eps or padding is caught by the comparison (the randomised BN makes it sensitive)."""
    timm = pytest.importorskip("timm")
    ref = timm.create_model("tf_mobilenetv3_small_minimal_100", pretrained=False, num_classes=10)
    x = _x()
    expected = _prepare_torch(ref, x)
    sd = ref.state_dict()
    for wrong in (dict(), dict(tf=True, bn_eps=1e-5), dict(tf=True, tf_same=False)):
        ours = convert(sd, "timm", "mobilenet_v3_small_minimal", **wrong).eval()
        with torch.no_grad():
            assert (ours(x) - expected).abs().max() > 10 * TOL, wrong


# --------------------------------------------------------------------------- Keras

KERAS = [
    # keras.applications builder, its kwargs, our name, convert kwargs
    ("MobileNet", {"alpha": 1.0}, "mobilenet_v1_100", {}),
    ("MobileNet", {"alpha": 0.25}, "mobilenet_v1_025", {}),
    ("MobileNetV2", {"alpha": 1.0}, "mobilenet_v2_100", {}),
    ("MobileNetV2", {"alpha": 0.35}, "mobilenet_v2_035", {}),
    ("MobileNetV2", {"alpha": 1.4}, "mobilenet_v2_140", {}),
    ("MobileNetV3Large", {}, "mobilenet_v3_large", {}),
    ("MobileNetV3Large", {"alpha": 0.75}, "mobilenet_v3_large_075", {}),
    ("MobileNetV3Large", {"minimalistic": True}, "mobilenet_v3_large_minimal", {}),
    ("MobileNetV3Small", {}, "mobilenet_v3_small", {}),
    ("MobileNetV3Small", {"alpha": 0.75}, "mobilenet_v3_small_075", {}),
    ("MobileNetV3Small", {"minimalistic": True}, "mobilenet_v3_small_minimal", {}),
]


def _randomize_keras(model, x: torch.Tensor, seed: int = 1) -> None:
    """As ``_randomize_torch``: moving stats from one training-mode batch, then perturbed."""
    rng = np.random.default_rng(seed)
    bns = [layer for layer in model.layers if type(layer).__name__ == "BatchNormalization"]
    momenta = [layer.momentum for layer in bns]
    for layer in bns:
        layer.momentum = 0.0  # moving = batch statistics after one call
    with torch.no_grad():
        model(x.permute(0, 2, 3, 1), training=True)
    for layer, momentum in zip(bns, momenta, strict=True):
        layer.momentum = momentum
        _, _, mean, var = layer.get_weights()
        n = mean.shape[0]
        values = [rng.uniform(0.8, 1.25, n), rng.normal(0, 0.2, n),
                  mean + rng.normal(0, 0.1, n) * np.sqrt(var), var * rng.uniform(0.8, 1.25, n)]
        layer.set_weights([v.astype("float32") for v in values])
    for layer in model.layers:
        if type(layer).__name__ != "BatchNormalization" and len(layer.get_weights()) == 2:  # kernel, bias
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, rng.normal(0, 0.1, bias.shape).astype("float32")])


@pytest.mark.parametrize("builder,k_kwargs,name,kwargs", KERAS,
                         ids=[f"{b}-{'-'.join(f'{k}{v}' for k, v in kw.items()) or 'default'}" for b, kw, *_ in KERAS])
def test_keras(builder, k_kwargs, name, kwargs):
    keras = pytest.importorskip("keras")
    # Keras MobileNet (V1) pads stride-2 depthwise convs by (0, 1) then "valid": TF "same" only on even
    # sizes, so V1 is compared at a multiple of 32. V2/V3 use correct_pad, TF "same" at every size.
    res = 96 if builder == "MobileNet" else RES
    extra = {"include_preprocessing": False} if "V3" in builder else {}
    ref = getattr(keras.applications, builder)(input_shape=(res, res, 3), weights=None, include_top=True,
                                               classes=10, classifier_activation=None, **extra, **k_kwargs)
    x = _x(res)
    _randomize_keras(ref, x)

    def logits():
        with torch.no_grad():
            return torch.as_tensor(keras.ops.convert_to_numpy(ref(x.permute(0, 2, 3, 1), training=False)))

    classifier = [layer for layer in ref.layers if layer.get_weights()][-1]  # Dense or 1x1 Conv2D
    kernel, bias = classifier.get_weights()
    classifier.set_weights([kernel, np.zeros_like(bias)])
    classifier.set_weights([kernel / np.float32(logits().std().item()), bias])
    expected = logits()
    ours = convert(ref, "keras", name, **kwargs)
    cfg = ours.config
    assert (cfg.bn_eps, cfg.tf_same, cfg.num_classes) == (1e-3, True, 10)
    if "V3" in builder:
        assert cfg.stem_scaled is False and ours.stem.conv.out_channels == 16
    _assert_close(ours, x, expected)


# --------------------------------------------------------------------------- options and errors

def test_config_for_states_each_source_rules():
    tv3 = config_for("torchvision", "mobilenet_v3_small_075")
    assert (tv3.bn_eps, tv3.tf_same, tv3.stem_scaled, tv3.expand_rule, tv3.head_rule) == \
        (1e-3, False, True, "scale", "scale")
    assert config_for("torchvision", "mobilenet_v2").bn_eps == 1e-5
    assert config_for("timm", "mobilenet_v3_small", width=0.5).stem_scaled is False
    assert config_for("timm", "mobilenet_v3_large_075").stem_scaled is True
    tf = config_for("timm", "mobilenet_v3_large", tf=True)
    assert (tf.bn_eps, tf.tf_same, tf.head_rule) == (1e-3, True, "keep_for_thin")
    k3 = config_for("keras", "mobilenet_v3_large_075", num_classes=10)
    assert (k3.bn_eps, k3.tf_same, k3.stem_scaled, k3.expand_rule, k3.num_classes) == (1e-3, True, False, "ratio", 10)
    assert config_for("keras", "mobilenet_v1_025", bn_eps=1e-5).bn_eps == 1e-5  # explicit options win
    assert source_options("keras", "mobilenet_v2", 1.4)["head_rule"] == "keep_for_thin"


@pytest.mark.parametrize("call,message", [
    (lambda: config_for("caffe", "mobilenet_v2"), "unknown source 'caffe'"),
    (lambda: convert({}, "caffe", "mobilenet_v2"), "unknown source"),
    (lambda: config_for("torchvision", "mobilenet_v1"), "torchvision has no mobilenet_v1"),
    (lambda: config_for("torchvision", "mobilenext"), "torchvision has no mobilenext"),
    (lambda: config_for("torchvision", "mobilenet_v2", tf=True), "tf= applies to timm only"),
    (lambda: config_for("timm", "mobilenet_v3_large", width=1.25), "pre-logits"),
    (lambda: config_for("timm", "mobilenet_v3_small", width=0.35), "last 1x1 conv"),
    (lambda: config_for("timm", "mobilenet_v1", width=0.35), "int\\(c \\* width\\)"),
    (lambda: convert({"w": torch.zeros(1)}, "keras", "mobilenet_v2"), "needs a Keras model"),
    (lambda: convert(object(), "torchvision", "mobilenet_v2"), "needs a state dict"),
])
def test_usage_errors(call, message):
    with pytest.raises(UsageError, match=message):
        call()


def test_wrong_width_names_both_tensors_and_shapes():
    sd = torchvision.models.mobilenet_v2().state_dict()
    with pytest.raises(UsageError) as e:
        convert(sd, "torchvision", "mobilenet_v2_050")
    msg = str(e.value)
    assert "'features.0.0.weight' has shape (32, 3, 3, 3)" in msg
    assert "'stem.conv.weight' needs (16, 3, 3, 3)" in msg


def test_wrong_family_is_refused():
    sd = torchvision.models.mobilenet_v3_small().state_dict()
    with pytest.raises(UsageError, match=r"cannot convert torchvision weights -> mobilenet_v3_large.*"
                                         r"the reference has \d+ tensors, ours \d+"):
        convert(sd, "torchvision", "mobilenet_v3_large")
    # a kind mismatch (V2 has no SE, no pre-logits) is named as such
    with pytest.raises(UsageError, match=r"BatchNorm|conv|linear"):
        convert(torchvision.models.mobilenet_v2().state_dict(), "torchvision", "mobilenet_v3_large")


def test_missing_and_unexpected_tensors_are_listed():
    sd = torchvision.models.mobilenet_v2(num_classes=10).state_dict()
    headless = {k: v for k, v in sd.items() if not k.startswith("classifier.")}
    with pytest.raises(UsageError, match=r"missing from the reference: classifier\.weight \(10, 1280\), "
                                         r"classifier\.bias \(10,\)"):
        convert(headless, "torchvision", "mobilenet_v2", num_classes=10)
    extra = dict(sd, **{"extra.weight": torch.zeros(3, 3)})
    with pytest.raises(UsageError, match=r"unexpected reference tensors with no place in ours: extra\.weight \(3, 3\)"):
        convert(extra, "torchvision", "mobilenet_v2", num_classes=10)


@pytest.mark.parametrize("timm_name,name,kwargs", [t for t in TIMM if t[0] in (
    "mobilenetv1_100", "mobilenetv2_035", "mobilenetv3_large_100", "mobilenetv3_small_100",
    "tf_mobilenetv3_large_minimal_100")], ids=lambda t: t if isinstance(t, str) else "")
def test_timm_safetensors_files_convert_despite_their_alphabetical_order(timm_name, name, kwargs, tmp_path):
    """safetensors stores tensors sorted by name (timm's Hugging Face files); the converter puts them
    back in timm's module order before pairing."""
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    from mobilenets.weights import load_foreign
    from mobilenets.weights.convert import timm_order

    ref = timm.create_model(timm_name, pretrained=False, num_classes=10)
    x = _x()
    expected = _prepare_torch(ref, x)
    state = ref.state_dict()
    assert list(timm_order(dict(sorted(state.items())))) == list(state)
    path = tmp_path / f"{timm_name}.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    _assert_close(load_foreign(path, "timm", name, **kwargs), x, expected)  # tf_ read off the file name
