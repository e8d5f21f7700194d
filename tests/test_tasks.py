"""Detection and segmentation on our backbones: torchvision's four MobileNetV3 task models convert
into ours with the same outputs, every family trains in every head, backbones take classifier
checkpoints, and bad input is a one-line UsageError."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import mobilenets
from mobilenets import detection, segmentation
from mobilenets.core.errors import UsageError
from mobilenets.models.taps import trunk
from mobilenets.weights import save_checkpoint

torchvision = pytest.importorskip("torchvision")
tv_detection = pytest.importorskip("torchvision.models.detection")
tv_segmentation = pytest.importorskip("torchvision.models.segmentation")

FAMILIES = ["mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small", "mobilenext",
            "mobilenet_v4_conv_small", "mobilenet_v4_hybrid_medium"]


def _randomise_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, so a misplaced tensor shows."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return model.eval()


def _image(h: int, w: int, seed: int) -> torch.Tensor:
    """An image with structure (a block of colour, a ramp), so detectors find something."""
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(3, h, w, generator=g) * 0.1
    img[:, h // 5:h // 2, w // 4:w // 2] += torch.tensor([0.9, 0.2, 0.1])[:, None, None]
    img[:, h // 2:, w // 2:] += torch.linspace(0, 0.9, w - w // 2)
    return img


# name -> (torchvision builder, its options; all but aux_loss are passed to ours too)
TORCHVISION = {
    "ssdlite320_mobilenet_v3_large": (tv_detection.ssdlite320_mobilenet_v3_large, {}),
    # small images; box_score_thresh 0: a random classifier's softmax over 91 classes stays below 0.05
    "fasterrcnn_mobilenet_v3_large_fpn": (tv_detection.fasterrcnn_mobilenet_v3_large_fpn,
                                          {"min_size": 128, "max_size": 160, "box_score_thresh": 0.0}),
    "lraspp_mobilenet_v3_large": (tv_segmentation.lraspp_mobilenet_v3_large, {}),
    "deeplabv3_mobilenet_v3_large": (tv_segmentation.deeplabv3_mobilenet_v3_large, {"aux_loss": True}),
}


@pytest.mark.parametrize("name", list(TORCHVISION))
def test_torchvision_task_models_convert_exactly(name):
    builder, options = TORCHVISION[name]
    ref = _randomise_bn(builder(weights=None, weights_backbone=None, **options))
    # as torchvision's trained weights (FrozenBatchNorm2d in Faster R-CNN): no batch counts
    state = {k: v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    ours_options = {k: v for k, v in options.items() if k != "aux_loss"}  # aux_loss: read off the weights
    ours = mobilenets.convert(state, "torchvision", name, **ours_options).eval()
    with torch.no_grad():
        if "mobilenet_v3_large_fpn" in name or name.startswith("ssdlite"):
            images = [_image(96, 128, 0), _image(120, 100, 1)]
            want, got = ref(images), ours(images)
            for w, g in zip(want, got, strict=True):
                assert len(w["boxes"]) > 0
                for key in ("boxes", "scores", "labels"):
                    torch.testing.assert_close(g[key], w[key], rtol=0, atol=0)
        else:
            x = torch.stack([_image(96, 112, 0), _image(96, 112, 1)])
            want, got = ref(x), ours(x)
            assert list(got) == list(want)
            for key in want:
                assert (got[key] - want[key]).abs().max().item() <= 1e-4
    assert ours.task == name.split("_mobilenet")[0].replace("fasterrcnn", "fasterrcnn_fpn")


def test_conversion_names_tensors_left_over_or_missing():
    ref = tv_segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None).state_dict()
    extra = dict(ref, **{"classifier.extra.weight": torch.zeros(1)})
    with pytest.raises(UsageError, match="unexpected reference tensors classifier.extra.weight"):
        mobilenets.convert(extra, "torchvision", "lraspp_mobilenet_v3_large")
    missing = {k: v for k, v in ref.items() if k != "classifier.high_classifier.weight"}
    with pytest.raises(UsageError, match="missing from the reference: classifier.high_classifier.weight"):
        mobilenets.convert(missing, "torchvision", "lraspp_mobilenet_v3_large")
    with pytest.raises(UsageError, match="source='torchvision'"):
        mobilenets.convert(ref, "timm", "lraspp_mobilenet_v3_large")
    with pytest.raises(UsageError, match="not torchvision's deeplabv3_mobilenet_v3_large"):
        mobilenets.convert(ref, "torchvision", "deeplabv3_mobilenet_v3_large")


def _det_targets(n: int, num_classes: int) -> list[dict]:
    boxes = torch.tensor([[8.0, 10.0, 40.0, 44.0], [30.0, 20.0, 60.0, 62.0]])
    return [{"boxes": boxes + i, "labels": torch.tensor([1, num_classes - 1])} for i in range(n)]


def _loss(model: nn.Module, task: str, num_classes: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    if task in ("ssdlite320", "fasterrcnn_fpn"):
        images = [_image(64, 64, 0), _image(64, 72, 1)]
        return sum(model(images, _det_targets(2, num_classes)).values())
    x = torch.rand(2, 3, 64, 64, generator=g)
    masks = torch.randint(0, num_classes, (2, 64, 64), generator=g)
    out = model(x)
    return sum(nn.functional.cross_entropy(logits, masks) for logits in out.values())


BUILDERS = {
    "ssdlite320": lambda b, **kw: detection.ssdlite320(b, **kw),
    "fasterrcnn_fpn": lambda b, **kw: detection.fasterrcnn_fpn(b, min_size=64, max_size=80, **kw),
    "lraspp": lambda b, **kw: segmentation.lraspp(b, **kw),
    "deeplabv3": lambda b, **kw: segmentation.deeplabv3(b, aux_loss=True, **kw),
}


@pytest.mark.parametrize("task", list(BUILDERS))
@pytest.mark.parametrize("family", FAMILIES)
def test_every_backbone_trains_in_every_head(family, task):
    model = BUILDERS[task](family, width=0.35, num_classes=3).train()
    assert (model.task, model.backbone_config.family, model.backbone_config.width) == (task, family, 0.35)
    stem = trunk(model).stem.conv.weight
    before = stem.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = _loss(model, task, 3)
    assert torch.isfinite(loss)
    loss.backward()
    opt.step()
    assert not torch.equal(before, stem.detach())


@pytest.mark.parametrize("family", FAMILIES)
def test_feature_maps_sit_at_torchvision_strides(family):
    """SSDLite taps stride 16 and 32; the segmenters stride 8 ("low": the stride-8 stage's first
    block) and 16 (dilated); Faster R-CNN's two maps are both at stride 32."""
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        ssd = trunk(detection.ssdlite320(family, width=0.35, num_classes=2).eval())(x)
        seg = trunk(segmentation.lraspp(family, width=0.35, num_classes=2).eval())(x)
        frcnn = trunk(detection.fasterrcnn_fpn(family, width=0.35, num_classes=2).eval())(x)
    assert {k: v.shape[-1] for k, v in ssd.items()} == {"0": 8, "1": 4}
    assert {k: v.shape[-1] for k, v in seg.items()} == {"low": 16, "high": 8}
    assert {k: v.shape[-1] for k, v in frcnn.items()} == {"0": 4, "1": 4}


def test_resolution_and_config_are_on_the_model():
    assert detection.ssdlite320("mobilenet_v3_small", num_classes=2).resolution == 320
    assert detection.fasterrcnn_fpn("mobilenet_v2", 0.35, 2, min_size=600).resolution == 600
    model = segmentation.deeplabv3("mobilenet_v3_small", num_classes=2)
    assert model.resolution == 520
    assert (model.backbone_config.output_stride, model.backbone_config.dilation_rule) == (16, "torchvision")
    assert detection.ssdlite320("mobilenet_v3_small", num_classes=2).backbone_config.reduced_tail
    assert not detection.ssdlite320("mobilenet_v2", 0.35, num_classes=2).backbone_config.reduced_tail


@pytest.mark.parametrize("task,family", [("ssdlite320", "mobilenet_v2"), ("lraspp", "mobilenet_v3_small")])
def test_pretrained_backbone_from_a_checkpoint(tmp_path, task, family):
    classifier = mobilenets.create_model(family, width=0.5)
    with torch.no_grad():
        classifier.blocks[3].project.conv.weight.normal_()
    path = save_checkpoint(tmp_path / "backbone.safetensors", classifier)
    build = {"ssdlite320": detection.ssdlite320, "lraspp": segmentation.lraspp}[task]
    model = build(family, width=0.5, num_classes=3, pretrained_backbone=path)
    torch.testing.assert_close(trunk(model).blocks[3].project.conv.weight, classifier.blocks[3].project.conv.weight)
    if task == "ssdlite320":  # torchvision reduces the tail only without a pretrained backbone
        assert not model.backbone_config.reduced_tail
    with pytest.raises(UsageError, match="not mobilenet_v2"):
        detection.ssdlite320("mobilenet_v2", width=0.75, num_classes=3, pretrained_backbone=path)


def test_pretrained_backbone_keeps_the_checkpoints_channel_rules(tmp_path):
    """torchvision's V3 at width 0.75 rounds expansions its own way: the task's backbone follows."""
    ref = torchvision.models.mobilenet_v3_large(width_mult=0.75)
    path = tmp_path / "mobilenet_v3_large_075.pth"
    torch.save(ref.state_dict(), path)
    model = detection.ssdlite320("mobilenet_v3_large", 0.75, 3, pretrained_backbone=path)
    assert model.backbone_config.expand_rule == "scale"
    torch.testing.assert_close(trunk(model).blocks[5].expand.conv.weight, ref.features[6].block[0][0].weight)


@pytest.mark.parametrize("call,message", [
    (lambda: detection.ssdlite320("resnet50"), "unknown model 'resnet50'"),
    (lambda: detection.fasterrcnn_fpn("mobilenet_v2", width=0), "width must be > 0"),
    (lambda: segmentation.lraspp("mobilenet_v2", width=9.0), "width must be > 0 and at most"),
    (lambda: segmentation.deeplabv3("mobilenet_v2", num_classes=0), "num_classes must be a whole number >= 1"),
    (lambda: detection.ssdlite320("mobilenet_v2", num_classes=2.5), "num_classes must be a whole number >= 1"),
    (lambda: segmentation.deeplabv3("mobilenet_v2", inter_channels=64), "deeplabv3 takes no options"),
    (lambda: segmentation.lraspp("mobilenet_v2", resolution=256), "resolution is the task's"),
    (lambda: detection.ssdlite320("mobilenet_v2", reduced_tail=True), "reduced_tail is torchvision's option"),
])
def test_bad_input_is_a_usage_error(call, message):
    with pytest.raises(UsageError, match=message) as info:
        call()
    assert "\n" not in str(info.value)
