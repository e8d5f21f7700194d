"""Export: inference graph rewrites, ONNX / OpenVINO / TFLite files verified in their runtimes, CLI."""
from __future__ import annotations

import importlib
import importlib.util
import json
from collections import Counter

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from mobilenets import create_model
from mobilenets.cli import app
from mobilenets.core.errors import UsageError
from mobilenets.deploy.export import VerificationError, export
from mobilenets.deploy.graph import deploy_module
from mobilenets.deploy.runtimes import available_backends, open_session

export_mod = importlib.import_module("mobilenets.deploy.export")  # the package re-exports the function
INSTALLED = available_backends()
needs = {fmt: pytest.mark.skipif(INSTALLED[b] is None, reason=f"{b} not installed")
         for fmt, b in (("onnx", "onnxruntime"), ("openvino", "openvino"), ("tflite", "litert"))}
if importlib.util.find_spec("litert_torch") is None:  # not imported here: it brings JAX's threads along
    needs["tflite"] = pytest.mark.skip(reason="litert-torch not installed")


def trained_like(name="mobilenet_v3_small", width=0.5, res=64, **kw):
    """A small model with non-trivial BN statistics and a classifier whose logits are not all ~0."""
    model = create_model(name, width=width, num_classes=10, resolution=res, **kw)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
        model.classifier.weight.normal_(0, 0.3, generator=g)
    return model.eval()


@pytest.fixture(scope="module")
def model():
    return trained_like()


@pytest.mark.parametrize("name, kw", [
    ("mobilenet_v1", dict(width=0.25)),
    ("mobilenet_v2", dict(width=0.35)),
    ("mobilenet_v3_large", dict(width=0.35)),
    ("mobilenet_v3_small", dict(width=0.5, tf_same=True)),
    ("mobilenext", dict(width=0.35, identity_mult=0.5)),
])
def test_deploy_module_computes_the_same_function(name, kw):
    model = trained_like(name, **kw)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        ref = model(x)
        dm = deploy_module(model)
        torch.testing.assert_close(dm(x), ref, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(deploy_module(model, nhwc=True)(x.permute(0, 2, 3, 1)), ref, atol=1e-5, rtol=1e-4)
    kinds = Counter(type(m).__name__ for m in dm.modules())
    assert not kinds["BatchNorm2d"] and not kinds["Dropout"] and not kinds["Linear"]
    assert model.training is False and any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # source kept


@needs["onnx"]
def test_onnx_export_graph_and_verification(model, tmp_path):
    import onnx
    result = export(model, "onnx", tmp_path)
    assert result.path.name == "mobilenet_v3_small-w0.5-r64-onnx-fp32.onnx"
    assert result.verification["max_abs_diff"] <= 1e-4 and result.verification["top1_agreement"] == 1.0
    proto = onnx.load(str(result.path))
    ops = Counter(n.op_type for n in proto.graph.node)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert ops["HardSwish"] > 0 and ops["HardSigmoid"] > 0 and ops["GlobalAveragePool"] > 0
    assert not {"BatchNormalization", "Dropout", "ReduceMean", "Gemm", "MatMul"} & set(ops)
    assert ops["Reshape"] + ops["Flatten"] == 1  # one flatten at the very end
    side = json.loads(result.sidecar.read_text())
    assert side["preprocessing"]["resolution"] == 64 and side["precision"] == "fp32"
    assert side["input_layout"] == "NCHW" and side["verification"]["max_abs_diff"] <= 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([result.path.name, result.sidecar.name])
    s = open_session(result.path)
    assert s.backend == "onnxruntime" and s.fixed_batch == 1 and s.preprocessing.resolution == 64
    x = np.random.default_rng(0).standard_normal((3, 3, 64, 64), dtype=np.float32)  # batch 3 on a batch-1 file
    np.testing.assert_allclose(s.run(x), open_session(model).run(x), atol=1e-4)


@needs["onnx"]
def test_onnx_dynamic_batch_nhwc_and_resolution(model, tmp_path):
    result = export(model, "onnx", tmp_path / "m.onnx", batch="dynamic", nhwc=True, resolution=96)
    s = open_session(result.path)
    assert s.fixed_batch is None and s.input_layout == "NHWC" and s.resolution == 96
    assert s.sess.get_inputs()[0].shape[1:] == [96, 96, 3]
    x = np.random.default_rng(0).standard_normal((3, 3, 96, 96), dtype=np.float32)
    np.testing.assert_allclose(s.run(x), open_session(model).run(x), atol=1e-4)


@needs["openvino"]
def test_openvino_export_and_bf16(model, tmp_path):
    result = export(model, "openvino", tmp_path)
    assert result.path.suffix == ".xml" and result.path.with_suffix(".bin").is_file()
    assert result.verification["max_abs_diff"] <= 1e-4
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".bin", ".json", ".xml"]
    import openvino as ov
    if "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        r16 = export(model, "openvino", tmp_path, precision="bf16")
        assert r16.path.name.endswith("-openvino-bf16.xml") and open_session(r16.path).precision == "bf16"
        assert r16.verification["top1_agreement"] >= 0.5


@needs["tflite"]
def test_tflite_export_nhwc_native_hard_swish(model, tmp_path):
    result = export(model, "tflite", tmp_path, nhwc=True)
    assert result.verification["max_abs_diff"] <= 1e-4
    s = open_session(result.path)
    assert s.backend == "litert" and s.input_layout == "NHWC"
    ops = Counter(o["op_name"] for o in s.interp._get_ops_details())
    assert ops["HARD_SWISH"] > 0 and not ops["TRANSPOSE"]


@needs["onnx"]
def test_failed_verification_leaves_nothing(model, tmp_path, monkeypatch):
    monkeypatch.setattr(export_mod, "FP32_TOLERANCE", -1.0)
    with pytest.raises(VerificationError, match="differ from PyTorch"):
        export(model, "onnx", tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, message", [
    (dict(fmt="coreml"), "unknown export format"),
    (dict(fmt="onnx", int8=True), "calibration data"),
    (dict(fmt="onnx", precision="bf16"), "openvino"),
    (dict(fmt="onnx", output="x.tflite"), "does not end in .onnx"),
    (dict(fmt="onnx", batch=0), "batch"),
    (dict(fmt="onnx", resolution=8), "too small"),
    (dict(fmt="onnx", int8=True, calib="/no/such/dir"), "calibration data"),
])
def test_bad_export_requests(model, tmp_path, kwargs, message):
    if kwargs.get("output"):
        kwargs["output"] = tmp_path / kwargs["output"]
    fmt = kwargs.pop("fmt")
    with pytest.raises(UsageError, match=message):
        export(model, fmt, kwargs.pop("output", tmp_path), **kwargs)


@needs["onnx"]
def test_cli_export(model, tmp_path):
    from mobilenets.weights.io import save_checkpoint
    ckpt = save_checkpoint(tmp_path / "m.safetensors", model, class_names=[f"c{i}" for i in range(10)])
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["export", str(ckpt), "--format", "onnx", "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["verification"]["max_abs_diff"] <= 1e-4
    s = open_session(info["path"])
    assert s.class_names[9] == "c9"
    bad = CliRunner().invoke(app, ["export", str(ckpt), "--format", "coreml"])
    assert bad.exit_code == 2 and "unknown export format" in bad.output
    bad = CliRunner().invoke(app, ["export", str(ckpt), "--int8"])
    assert bad.exit_code == 2 and "calibration" in bad.output
