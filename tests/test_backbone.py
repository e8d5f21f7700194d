"""Backbones: ``features_only`` in timm's semantics, ``output_stride`` as dilation, ``reduced_tail``.

References with random weights and randomised BatchNorm statistics, in eval mode: timm's
``features_only`` models and torchvision's dilated / reduced-tail MobileNetV3 give the same
feature maps (and logits) as ours carrying their weights.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import mobilenets
from mobilenets import UsageError
from mobilenets.models.backbone import FeatureNet

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")

TOL = 1e-4


def _randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.2)
    return model.eval()


def _image(size: int = 96, n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


# (timm name, our name, options for both), a tf_ port and a minimal variant among them
TIMM_CASES = [
    ("mobilenetv1_100", "mobilenet_v1", {}),
    ("mobilenetv2_100", "mobilenet_v2", {}),
    ("mobilenetv2_050", "mobilenet_v2", {"width": 0.5}),
    ("mobilenetv3_large_100", "mobilenet_v3_large", {}),
    ("mobilenetv3_small_100", "mobilenet_v3_small", {}),
    ("tf_mobilenetv3_large_075", "mobilenet_v3_large", {"width": 0.75}),
    ("tf_mobilenetv3_small_minimal_100", "mobilenet_v3_small_minimal", {}),
]


@pytest.mark.parametrize("timm_name,ours,opts", TIMM_CASES, ids=[c[0] for c in TIMM_CASES])
def test_timm_features_only_equal(timm_name, ours, opts):
    ref = _randomise_bn(timm.create_model(timm_name, features_only=True))
    model = mobilenets.convert(ref, "timm", ours, features_only=True, **opts).eval()
    assert isinstance(model, FeatureNet)
    assert model.feature_info.channels() == ref.feature_info.channels()
    assert model.feature_info.reduction() == ref.feature_info.reduction()
    x = _image()
    with torch.no_grad():
        got, want = model(x), ref(x)
    assert len(got) == len(want) == 5
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        assert (g - w).abs().max().item() <= TOL


@pytest.mark.parametrize("output_stride,out_indices", [(16, None), (8, (1, 2, 4))])
def test_timm_output_stride_and_out_indices_equal(output_stride, out_indices):
    kw = {"output_stride": output_stride, "out_indices": out_indices}
    ref = _randomise_bn(timm.create_model("mobilenetv3_large_100", features_only=True, **kw))
    model = mobilenets.convert(ref, "timm", "mobilenet_v3_large", features_only=True, **kw).eval()
    assert model.feature_info.reduction() == ref.feature_info.reduction()
    assert model.feature_info.channels() == ref.feature_info.channels()
    x = _image()
    with torch.no_grad():
        for g, w in zip(model(x), ref(x), strict=True):
            assert g.shape == w.shape and (g - w).abs().max().item() <= TOL


@pytest.mark.parametrize("name", ["mobilenet_v3_large", "mobilenet_v3_small"])
@pytest.mark.parametrize("reduced_tail,dilated", [(True, False), (False, True), (True, True)])
def test_torchvision_dilated_and_reduced_tail_equal(name, reduced_tail, dilated):
    ref = _randomise_bn(getattr(torchvision.models, name)(reduced_tail=reduced_tail, dilated=dilated))
    ours = mobilenets.convert(ref.state_dict(), "torchvision", name, reduced_tail=reduced_tail,
                              output_stride=16 if dilated else 32, dilation_rule="torchvision").eval()
    x = _image()
    with torch.no_grad():
        assert (ours(x) - ref(x)).abs().max().item() <= TOL
        assert ours.forward_features(x).shape == ref.features(x).shape


def test_feature_info_names_the_modules_that_produce_each_map():
    model = mobilenets.create_model("mobilenet_v2").eval()
    taps = {}
    modules = dict(model.named_modules())
    for d in model.feature_info:
        modules[d["module"]].register_forward_hook(lambda m, i, o, name=d["module"]: taps.setdefault(name, o))
    backbone = mobilenets.create_model("mobilenet_v2", features_only=True)
    backbone.load_state_dict(model.state_dict(), strict=False)
    x = _image(64, 1)
    with torch.no_grad():
        model(x)
        feats = backbone.eval()(x)
    for d, f in zip(model.feature_info, feats, strict=True):
        assert torch.equal(taps[d["module"]], f)
        assert f.shape[1] == d["num_chs"] and 64 // f.shape[-1] == d["reduction"]


@pytest.mark.parametrize("family", ["mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small",
                                    "mobilenet_v3_large_minimal", "mobilenext"])
@pytest.mark.parametrize("output_stride", [32, 16, 8])
def test_every_family_is_a_backbone_at_every_output_stride(family, output_stride):
    model = mobilenets.create_model(family, width=0.5, features_only=True, output_stride=output_stride).eval()
    x = _image(64, 1)
    with torch.no_grad():
        feats = model(x)
    info = model.feature_info
    assert len(feats) == 5 and info.reduction() == [min(r, output_stride) for r in (2, 4, 8, 16, 32)]
    for f, c, r in zip(feats, info.channels(), info.reduction(), strict=True):
        assert f.shape == (1, c, 64 // r, 64 // r)
    # no classifier: its keys are the classifier's own, so classification weights load into it
    assert not any(k.startswith(("classifier", "pre_logits")) for k in model.state_dict())


def test_backbone_takes_classification_checkpoint(tmp_path):
    from mobilenets.weights import save_checkpoint

    model = mobilenets.create_model("mobilenet_v3_small", num_classes=10)
    path = save_checkpoint(tmp_path / "m.safetensors", model)
    backbone = mobilenets.create_model("mobilenet_v3_small", pretrained=path, features_only=True,
                                       output_stride=16, out_indices=(-2, -1))
    assert backbone.config.output_stride == 16 and backbone.feature_info.out_indices == (3, 4)
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, model.state_dict()[key])
    x = _image(64, 1)
    with torch.no_grad():
        low, high = backbone.eval()(x)
    assert low.shape[-1] == high.shape[-1] == 4  # the last stride became dilation


def test_dilation_keeps_weights_and_changes_only_resolution():
    plain = mobilenets.create_model("mobilenet_v2").eval()
    dilated = mobilenets.create_model("mobilenet_v2", output_stride=8).eval()
    assert plain.state_dict().keys() == dilated.state_dict().keys()
    convs = [m for m in dilated.modules() if isinstance(m, nn.Conv2d) and m.dilation != (1, 1)]
    assert convs and all(m.padding[0] == m.dilation[0] * (m.kernel_size[0] // 2) for m in convs)
    assert dilated.config.total_stride == 8


def test_reduced_tail_halves_the_last_stage():
    full = mobilenets.create_model("mobilenet_v3_large")
    reduced = mobilenets.create_model("mobilenet_v3_large", reduced_tail=True)
    assert full.feature_info[-1]["num_chs"] == 960 and reduced.feature_info[-1]["num_chs"] == 480
    assert reduced.pre_logits.fc.out_features == 640
    assert sum(p.numel() for p in reduced.parameters()) < sum(p.numel() for p in full.parameters())


@pytest.mark.parametrize("kwargs,message", [
    (dict(output_stride=4), "output_stride must be one of 8, 16, 32"),
    (dict(dilation_rule="tf"), "dilation_rule"),
    (dict(features_only=True, out_indices=(5,)), "has 5 feature maps"),
    (dict(features_only=True, out_indices=(3, 1)), "increasing order"),
    (dict(out_indices=(1,)), "features_only=True"),
])
def test_bad_backbone_options(kwargs, message):
    with pytest.raises(UsageError, match=message):
        mobilenets.create_model("mobilenet_v3_large", **kwargs)


def test_reduced_tail_is_v3_only():
    with pytest.raises(UsageError, match="reduced_tail is torchvision's option for MobileNetV3"):
        mobilenets.create_model("mobilenet_v2", reduced_tail=True)
