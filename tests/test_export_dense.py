"""Export of dense-prediction models: backbones (FeatureNet), segmenters (LR-ASPP, DeepLabV3) and detectors
(SSDLite, Faster R-CNN), each output named, verified in its runtime and described by the sidecar."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision
from test_export import needs  # skips only when a runtime is not installed at all
from torch import nn

from mobilenets import create_model
from mobilenets.core.errors import UsageError
from mobilenets.deploy.export import VerificationError, export
from mobilenets.deploy.runtimes import open_session
from mobilenets.deploy.runtimes.onnxruntime import OrtSession
from mobilenets.deploy.tasks import structured_images

RES = 64
EVERY = [pytest.param(f, marks=needs[f]) for f in needs]


def calibrated(model: nn.Module, run) -> nn.Module:
    """``model`` with perturbed BN affine parameters and BN statistics of the batch ``run(model)`` feeds
    it in train mode: activations of O(1) all the way down (a fresh model's are ~0 or blow up)."""
    g = torch.Generator().manual_seed(0)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for m in bns:
            m.weight.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.75)
            m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batch
        model.train()
        run(model)
    return model.eval()


def images(n: int = 4, res: int = RES, seed: int = 0) -> torch.Tensor:
    """Normalised random images, N x 3 x res x res."""
    return torch.randn(n, 3, res, res, generator=torch.Generator().manual_seed(seed))


def backbone(name: str, **kw) -> nn.Module:
    torch.manual_seed(0)
    return calibrated(create_model(name, features_only=True, resolution=RES, **kw), lambda m: m(images()))


def segmenter(kind: str) -> nn.Module:
    torch.manual_seed(0)
    build = {"lraspp": torchvision.models.segmentation.lraspp_mobilenet_v3_large,
             "deeplabv3": torchvision.models.segmentation.deeplabv3_mobilenet_v3_large}[kind]
    extra = {"aux_loss": False} if kind == "deeplabv3" else {}
    return calibrated(build(weights=None, weights_backbone=None, num_classes=5, **extra), lambda m: m(images()))


def ssdlite() -> nn.Module:
    """torchvision's SSDLite with scores spread out (class logits scaled up): distinct detections to compare."""
    torch.manual_seed(0)
    model = torchvision.models.detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)

    def run(m):
        batch = m.transform(list(structured_images(4, 320, seed=5)))[0].tensors
        m.head(list(m.backbone(batch).values()))

    model = calibrated(model, run)
    with torch.no_grad():
        for block in model.head.classification_head.module_list:
            block[-1].weight.mul_(2.0)
    return model


def fasterrcnn(res: int = 128) -> nn.Module:
    """torchvision's Faster R-CNN at ``res`` pixels, its box classifier scaled up so that it finds objects."""
    torch.manual_seed(0)
    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(
        weights=None, weights_backbone=None, min_size=res, max_size=res)
    model = calibrated(model, lambda m: m.backbone(m.transform(list(structured_images(4, res, seed=5)))[0].tensors))
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight.mul_(30.0)
    return model


@pytest.fixture(scope="module")
def v3_large():
    return backbone("mobilenet_v3_large")


@pytest.fixture(scope="module")
def v2_narrow():
    return backbone("mobilenet_v2", width=0.35, out_indices=(1, 2, 4))


@pytest.fixture(scope="module")
def lraspp():
    return segmenter("lraspp")


def reference(model: nn.Module, x: np.ndarray) -> list[np.ndarray]:
    with torch.inference_mode():
        out = model(torch.from_numpy(x))
    return [t.numpy() for t in (out if isinstance(out, list) else [out["out"]])]


def check_export(result, model: nn.Module, fmt: str, names: list[str]) -> None:
    """The verified export's files, sidecar and outputs: what a user opening it gets."""
    folder = result.path.parent
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in [*result.files, result.sidecar])
    side = json.loads(result.sidecar.read_text())
    assert side["outputs"] == names and len(side["output_shapes"]) == len(names)
    x = np.random.default_rng(1).standard_normal((3, 3, RES, RES), dtype=np.float32)
    ref = reference(model, x)
    assert [s[1:] for s in side["output_shapes"]] == [list(r.shape[1:]) for r in ref]
    if fmt == "coreml":  # checked, not run, on Linux
        assert result.verification["ran"] is False
        assert [o["name"] for o in result.verification["outputs"]] == names
        return
    assert result.verification["max_abs_diff"] <= 1e-4 * max(1.0, *(float(np.abs(r).max()) for r in ref))
    session = open_session(result.path)
    assert session.output_names == names
    got = session.run_all(x)  # a batch of 3 on files of batch 1: chunked per output
    for g, r in zip(got, ref, strict=True):
        assert g.shape == r.shape
        assert np.abs(g - r).max() <= 1e-4 * max(1.0, float(np.abs(r).max()))
    if len(names) > 1:
        with pytest.raises(UsageError, match="use run_all"):
            session.run(x)


# ------------------------------------------------------------------------------------------
# backbones


@pytest.mark.parametrize("fmt", EVERY)
def test_v3_large_backbone_exports_to_every_runtime(v3_large, fmt, tmp_path):
    result = export(v3_large, fmt, tmp_path)
    names = [f"feature{i}" for i in range(5)]
    check_export(result, v3_large, fmt, names)
    side = json.loads(result.sidecar.read_text())
    assert side["task"] == "backbone" and side["class_names"] is None
    assert side["feature_info"]["channels"] == [16, 24, 40, 112, 960]
    assert side["feature_info"]["reductions"] == [2, 4, 8, 16, 32]
    assert result.path.name.startswith("mobilenet_v3_large-w1.0-features-r64-")


@pytest.mark.parametrize("fmt", EVERY)
def test_v2_backbone_with_chosen_maps_exports_to_every_runtime(v2_narrow, fmt, tmp_path):
    """out_indices (1, 2, 4): feature0..2 are the maps at strides 4, 8 and 32; TFLite with NHWC input."""
    result = export(v2_narrow, fmt, tmp_path, nhwc=fmt == "tflite")
    check_export(result, v2_narrow, fmt, ["feature0", "feature1", "feature2"])
    info = json.loads(result.sidecar.read_text())["feature_info"]
    assert info["reductions"] == [4, 8, 32] and info["out_indices"] == [1, 2, 4]


@needs["ncnn"]
def test_an_ncnn_backbone_without_its_sidecar_gives_its_maps_in_order(v2_narrow, tmp_path):
    """ncnn lists outputs as its layers come; pnnx numbers them in the module's order, which the session keeps."""
    result = export(v2_narrow, "ncnn", tmp_path)
    result.sidecar.unlink()
    session = open_session(result.path)
    assert session.output_names == ["out0", "out1", "out2"]
    x = np.random.default_rng(2).standard_normal((1, 3, RES, RES), dtype=np.float32)
    for g, r in zip(session.run_all(x), reference(v2_narrow, x), strict=True):
        assert g.shape == r.shape and np.abs(g - r).max() < 1e-4 * max(1.0, float(np.abs(r).max()))


def test_a_torch_session_runs_a_backbone_and_a_segmenter(v2_narrow, lraspp):
    x = images(2).numpy()
    s = open_session(v2_narrow)
    assert s.output_names == ["feature0", "feature1", "feature2"]
    for g, r in zip(s.run_all(x), reference(v2_narrow, x), strict=True):
        np.testing.assert_array_equal(g, r)
    s = open_session(lraspp)
    assert s.output_names == ["out"]
    np.testing.assert_array_equal(s.run_all(x)[0], reference(lraspp, x)[0])


# ------------------------------------------------------------------------------------------
# segmenters


@pytest.mark.parametrize("fmt", EVERY)
def test_lraspp_exports_to_every_runtime(lraspp, fmt, tmp_path):
    result = export(lraspp, fmt, tmp_path, resolution=RES)
    check_export(result, lraspp, fmt, ["out"])
    side = json.loads(result.sidecar.read_text())
    assert side["task"] == "lraspp" and side["output_shapes"][0] == [1, 5, RES, RES]
    assert side["preprocessing"]["crop_pct"] == 1.0 and side["resolution"] == RES
    if fmt != "coreml":
        assert result.verification["pixel_agreement"] == 1.0


@pytest.mark.parametrize("fmt", [pytest.param(f, marks=needs[f]) for f in ("onnx", "openvino", "ncnn", "mnn")])
def test_deeplabv3_exports_without_its_aux_head(fmt, tmp_path):
    model = segmenter("deeplabv3")
    result = export(model, fmt, tmp_path, resolution=RES)
    check_export(result, model, fmt, ["out"])
    assert json.loads(result.sidecar.read_text())["task"] == "deeplabv3"


@needs["onnx"]
def test_a_segmenter_reads_its_task_and_resolution_off_the_model(tmp_path):
    """Our builders set ``task``, ``resolution`` and ``backbone_config``: the file's name and size follow them."""
    model = segmenter("lraspp")
    model.task, model.resolution = "lraspp", 96
    model.backbone_config = create_model("mobilenet_v3_large").config
    result = export(model, "onnx", tmp_path)
    assert result.path.name == "lraspp-mobilenet_v3_large-w1.0-r96-onnx-fp32.onnx"
    side = json.loads(result.sidecar.read_text())
    assert side["resolution"] == 96 and side["config"]["family"] == "mobilenet_v3_large"


# ------------------------------------------------------------------------------------------
# detectors


def check_detections(result, model: nn.Module, res: int) -> None:
    """The ONNX file's boxes, scores and labels on an image verification did not see equal PyTorch's."""
    side = json.loads(result.sidecar.read_text())
    assert side["outputs"] == ["boxes", "scores", "labels"] and side["input_layout"] == "CHW"
    assert side["output_shapes"] == [[None, 4], [None], [None]]
    assert min(result.verification["detections"]) > 0
    assert result.verification["max_box_diff"] <= 1e-2
    image = structured_images(1, res, seed=7)[0]
    session = open_session(result.path)
    boxes, scores, labels = session.run_all(image.numpy())
    with torch.inference_mode():
        ref = model([image])[0]
    assert len(boxes) == len(ref["boxes"]) > 0
    # each of PyTorch's detections is one of the file's: same label and score, box within 1e-3 relative + 1e-2 px
    # (paired, not compared by index: scores a rounding apart may come out in either order)
    free = np.ones(len(boxes), bool)
    for box, score, label in zip(ref["boxes"].numpy(), ref["scores"].numpy(), ref["labels"].numpy(), strict=True):
        fits = free & (labels == label) & (np.abs(scores - score) <= 1e-4) & \
            (np.abs(boxes - box) <= 1e-2 + 1e-3 * np.abs(box)).all(1)
        assert fits.any(), (box, score, label)
        free[np.flatnonzero(fits)[np.argmin(np.abs(boxes[fits] - box).max(1))]] = False


@needs["onnx"]
def test_ssdlite_exports_to_onnx_with_its_post_processing(tmp_path):
    model = ssdlite()
    result = export(model, "onnx", tmp_path)
    assert json.loads(result.sidecar.read_text())["resolution"] == 320  # torchvision's own size
    check_detections(result, model, 320)


@needs["onnx"]
def test_fasterrcnn_exports_to_onnx_with_its_post_processing(tmp_path):
    model = fasterrcnn()
    result = export(model, "onnx", tmp_path)
    assert result.path.name == "fasterrcnn-r128-onnx-fp32.onnx"
    check_detections(result, model, 128)


# ------------------------------------------------------------------------------------------
# what cannot be done, and failures


def plain_ssdlite():
    return torchvision.models.detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)


def plain_lraspp():
    return torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None)


@pytest.mark.parametrize("make, kwargs, message", [
    (plain_ssdlite, dict(fmt="tflite"), "exports to onnx .*not tflite"),
    (plain_ssdlite, dict(fmt="coreml"), "exports to onnx .*not coreml"),
    (plain_ssdlite, dict(fmt="onnx", batch=2), "one 3 x H x W image"),
    (plain_ssdlite, dict(fmt="onnx", batch="dynamic"), "one 3 x H x W image"),
    (lambda: create_model("mobilenet_v2", width=0.35, features_only=True), dict(fmt="onnx", int8=True),
     "fp32, not int8"),
    (plain_lraspp, dict(fmt="openvino", precision="bf16"), "fp32, not bf16"),
    (plain_lraspp, dict(fmt="onnx", weights="x.safetensors"), "weights= loads classifier"),
    (plain_lraspp, dict(fmt="onnx", resolution=16), "resolution 16 is too small"),
    (lambda: nn.Conv2d(3, 8, 3), dict(fmt="onnx"), "not Conv2d"),
])
def test_bad_requests_are_one_line_usage_errors(make, kwargs, message, tmp_path):
    with pytest.raises(UsageError, match=message) as err:
        export(make(), output=tmp_path, **kwargs)
    assert "\n" not in str(err.value) and list(tmp_path.iterdir()) == []


@needs["onnx"]
def test_a_feature_map_that_differs_leaves_nothing(v2_narrow, tmp_path, monkeypatch):
    run_all = OrtSession._run_all

    def off(self, x):
        out = run_all(self, x)
        out[1] = out[1] + 0.1
        return out

    monkeypatch.setattr(OrtSession, "_run_all", off)
    with pytest.raises(VerificationError, match="output 'feature1' differs from PyTorch"):
        export(v2_narrow, "onnx", tmp_path)
    assert list(tmp_path.iterdir()) == []


@needs["onnx"]
def test_detections_that_differ_leave_nothing(tmp_path, monkeypatch):
    run_all = OrtSession._run_all

    def shifted(self, x):
        boxes, scores, labels = run_all(self, x)
        return [boxes + 0.5, scores, labels]

    monkeypatch.setattr(OrtSession, "_run_all", shifted)
    with pytest.raises(VerificationError, match="have no match"):
        export(ssdlite(), "onnx", tmp_path)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------
# every family in every head


@needs["onnx"]
@pytest.mark.parametrize("family", ["mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small", "mobilenext",
                                    "mobilenet_v4_conv_small"])
def test_every_family_in_every_head_exports_to_onnx(family, tmp_path):
    """Our builders on each family, exported and verified; BN statistics from data and class logits
    spread (as for torchvision's models above), so that detections are distinct and comparable."""
    from mobilenets import detection, segmentation

    def spread_detector(m, res):
        batch = lambda m: m.transform(list(structured_images(4, res, seed=5)))[0].tensors  # noqa: E731
        if hasattr(m, "rpn"):
            m = calibrated(m, lambda m: m.backbone(batch(m)))
            with torch.no_grad():
                m.roi_heads.box_predictor.cls_score.weight.mul_(10.0)
            return m
        m = calibrated(m, lambda m: m.head(list(m.backbone(batch(m)).values())))
        with torch.no_grad():
            for block in m.head.classification_head.module_list:
                block[-1].weight.mul_(2.0)
        return m

    torch.manual_seed(0)
    for name, build, kw in [("lraspp", segmentation.lraspp, {}), ("deeplabv3", segmentation.deeplabv3, {}),
                            ("ssdlite320", detection.ssdlite320, {}),
                            ("fasterrcnn_fpn", detection.fasterrcnn_fpn, {"min_size": 96, "max_size": 96})]:
        model = build(family, width=0.35, num_classes=3, **kw)
        dense = name in ("lraspp", "deeplabv3")
        model = calibrated(model, lambda m: m(images())) if dense else spread_detector(model, model.resolution)
        result = export(model, "onnx", tmp_path / name, resolution=RES if dense else None)
        side = json.loads(result.sidecar.read_text())
        assert side["task"] == name and result.path.name.startswith(f"{name}-{family}-w0.35")
        assert result.verification["backend"] == "onnxruntime"
        if dense:
            assert side["output_shapes"] == [[1, 3, RES, RES]]
        else:
            assert side["outputs"] == ["boxes", "scores", "labels"]
            assert min(result.verification["detections"]) > 0
