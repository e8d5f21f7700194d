"""Architecture properties over families x widths x resolutions, and the build options."""
import pytest
import torch

import mobilenets
from mobilenets import UsageError, create_model
from mobilenets.models import FAMILIES
from mobilenets.models.blocks import InvertedResidual, SandGlass
from mobilenets.models.layers import Conv2dSame, make_divisible, tf_same_pad

WIDTHS = {"mobilenet_v1": (0.25, 1.0), "mobilenet_v2": (0.35, 1.4), "mobilenet_v3_large": (0.35, 1.25),
          "mobilenet_v3_small": (0.5, 1.0), "mobilenet_v3_large_minimal": (0.75,),
          "mobilenet_v3_small_minimal": (1.0,), "mobilenext": (0.5, 1.4)}


CASES = [(f, w) for f, ws in WIDTHS.items() for w in ws]


@pytest.mark.parametrize("family,width,resolution", [(f, w, (64, 96, 128)[i % 3]) for i, (f, w) in enumerate(CASES)])
def test_forward_shape_finite_and_trainable(family, width, resolution):
    model = create_model(family, width=width, num_classes=7)
    x = torch.randn(2, 3, resolution, resolution)
    out = model(x)
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    out.logsumexp(1).mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


def test_every_family_builds_eval_and_in_chans():
    for family in FAMILIES:
        model = create_model(family, in_chans=1, num_classes=3).eval()
        assert model(torch.randn(1, 1, 32, 32)).shape == (1, 3)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_cifar_stem_keeps_resolution_longer(family):
    plain = create_model(family, num_classes=10).eval()
    cifar = create_model(family, num_classes=10, cifar_stem=True).eval()
    x = torch.randn(1, 3, 32, 32)
    assert plain.forward_features(x).shape[-1] == 1
    assert cifar.forward_features(x).shape[-1] == 8  # output stride 4: three stride-2 layers made stride 1
    assert create_model(family, cifar_stem=2).eval().forward_features(x).shape[-1] == 4
    assert cifar.config.total_stride == 4
    # same weights: the stem option changes strides only
    assert [p.shape for p in plain.parameters()] == [p.shape for p in cifar.parameters()]


def test_v3_fidelity_points():
    large, small = create_model("mobilenet_v3_large"), create_model("mobilenet_v3_small")
    # the stem is a plain conv, not part of the first bottleneck (which has no expand conv)
    assert large.stem.conv.out_channels == 16 and isinstance(large.blocks[0].expand, torch.nn.Identity)
    # SE sits after the depthwise activation, squeeze channels are multiples of 8
    block = large.blocks[3]
    names = [n for n, _ in block.named_children()]
    assert names.index("se") == names.index("dw") + 1
    for m in large.modules():
        if isinstance(m, mobilenets.models.layers.SqueezeExcite):
            assert m.fc1.out_channels % 8 == 0
    assert large.head_hidden_size == 1280 and small.head_hidden_size == 1024
    # no SE in Small's last conv
    assert isinstance(small.head, mobilenets.models.layers.ConvNormAct)
    assert not any(isinstance(m, mobilenets.models.layers.SqueezeExcite) for m in small.head.modules())
    assert isinstance(small.head.act, torch.nn.Hardswish)


def test_minimalistic_has_no_se_hswish_or_5x5():
    for name in ("mobilenet_v3_large_minimal", "mobilenet_v3_small_minimal"):
        model = create_model(name)
        mods = list(model.modules())
        assert not any(isinstance(m, (torch.nn.Hardswish, mobilenets.models.layers.SqueezeExcite)) for m in mods)
        assert all(m.kernel_size == (3, 3) for m in mods if isinstance(m, torch.nn.Conv2d) and m.groups > 1)


def test_v2_last_conv_stays_1280_for_thin_models():
    assert create_model("mobilenet_v2", width=0.5).num_features == 1280
    assert create_model("mobilenet_v2", width=1.4).num_features == 1792


def test_mobilenext_identity_multiplier_changes_shortcut_only():
    full = create_model("mobilenext")
    half = create_model("mobilenext", identity_mult=0.5)
    half.load_state_dict(full.state_dict())
    sg = [m for m in half.modules() if isinstance(m, SandGlass) and m.residual_channels]
    assert sg and all(m.residual_channels * 2 == m.dw2[0].out_channels for m in sg)
    x = torch.randn(1, 3, 64, 64)
    full.eval(), half.eval()
    a, b = full.forward_features(x), half.forward_features(x)
    assert a.shape == b.shape and (a - b).abs().max() > 1e-3 * a.abs().max()


def test_inverted_residual_shortcut_rule():
    assert InvertedResidual(16, 96, 16, stride=1).residual_channels == 16
    assert InvertedResidual(16, 96, 16, stride=2).residual_channels == 0
    assert InvertedResidual(16, 96, 24, stride=1).residual_channels == 0


def test_make_divisible_matches_reference_rule():
    assert make_divisible(32 * 0.35) == 16  # never more than 10% below
    assert make_divisible(16 * 0.75) == 16 and make_divisible(1280 * 1.4) == 1792 and make_divisible(5.6) == 8


def test_tf_same_padding_is_asymmetric_for_stride_2():
    assert tf_same_pad(224, 3, 2) == (0, 1) and tf_same_pad(225, 3, 2) == (1, 1) and tf_same_pad(224, 5, 2) == (1, 2)
    model = create_model("mobilenet_v2", tf_same=True)
    assert any(isinstance(m, Conv2dSame) for m in model.modules())
    for res in (224, 225):
        assert model.eval()(torch.randn(1, 3, res, res)).shape == (1, 1000)


def test_named_variant_and_config_round_trip():
    model = create_model("mobilenet_v1_025_128")
    assert model.config.width == 0.25 and model.config.resolution == 128
    again = mobilenets.ModelConfig.from_dict(model.config.to_dict())
    assert again == model.config


@pytest.mark.parametrize("kwargs,message", [
    (dict(name="mobilenet_v2", width=0), "width must be > 0"),
    (dict(name="mobilenet_v2", width=-1.0), "width must be > 0"),
    (dict(name="mobilenet_v2", width=float("inf")), "width must be > 0 and at most 4, got inf"),
    (dict(name="mobilenet_v2", width=float("nan")), "width must be > 0 and at most 4, got nan"),
    (dict(name="mobilenet_v2", width=1e6), "width must be > 0 and at most 4, got 1000000.0"),
    (dict(name="mobilenet_v2", resolution=0), "resolution must be a whole number of pixels"),
    (dict(name="mobilenet_v2", resolution=100_000), "at most 4096, got 100000"),
    (dict(name="mobilenet_v2", in_chans=0), "in_chans must be > 0"),
    (dict(name="mobilenet_v2", num_classes=0), "num_classes must be > 0"),
    (dict(name="mobilenet_v2", resolution=16), "too small"),
    (dict(name="mobilenext", identity_mult=0), "identity_mult"),
    (dict(name="mobilenet_v2_140", width=0.5), "pass width only with the base name"),
    (dict(name="mobilenet_v3_lage"), "did you mean mobilenet_v3_large"),
])
def test_bad_input_is_a_usage_error(kwargs, message):
    with pytest.raises(UsageError, match=message):
        create_model(**kwargs)


def test_cifar_stem_allows_small_resolution():
    model = create_model("mobilenet_v3_small", cifar_stem=True, resolution=8)
    assert model.config.resolution == 8


def test_list_models():
    assert "mobilenet_v2_140" in mobilenets.list_models("mobilenet_v2*")
    assert set(mobilenets.list_models("mobilenext")) >= {"mobilenext", "mobilenext_100", "mobilenext_035"}
    assert all(n.startswith("mobilenet_v1") for n in mobilenets.list_models("mobilenet_v1*"))
    assert len(mobilenets.list_models("mobilenet_v1_*")) == 16


def test_list_patterns_match_from_any_part_of_a_name():
    v3 = mobilenets.list_models("v3*")  # the example in `mobilenets list --help`
    assert v3 and v3 == mobilenets.list_models("mobilenet_v3*") and "mobilenet_v3_small_075" in v3
    assert mobilenets.list_models("V1_*") == mobilenets.list_models("mobilenet_v1_*")
    assert mobilenets.list_models("*_128") == [n for n in mobilenets.VARIANTS if n.endswith("_128")]
    assert mobilenets.list_models("small_minimal") == ["mobilenet_v3_small_minimal", "mobilenet_v3_small_minimal_100"]
    assert mobilenets.list_models("3*") == []  # parts start after an underscore, not inside a word
    assert mobilenets.models.match_models("v3*") == v3
    with pytest.raises(UsageError, match="no model matches 'v9\\*'"):
        mobilenets.models.match_models("v9*")


def test_build_model_sets_no_metadata_the_loader_does():
    from mobilenets.models import build_model
    assert build_model("mobilenet_v1_025_128").checkpoint_meta is None
    meta = create_model("mobilenet_v1_025_128", cifar_stem=True).checkpoint_meta
    assert meta.variant == "mobilenet_v1_025_128" and meta.preprocessing.kind == "cifar"
    assert meta.config.width == 0.25 and meta.preprocessing.resolution == 128
