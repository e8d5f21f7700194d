"""Export: inference graph rewrites, ONNX / OpenVINO / TFLite files verified in their runtimes, CLI."""
from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import stat
import time
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
from mobilenets.deploy.runtimes import available_backends, by_format, open_session

export_mod = importlib.import_module("mobilenets.deploy.export")  # the package re-exports the function
INSTALLED = available_backends()
# Each runtime's tests skip only when its package is not installed at all; one that is installed but
# fails to import runs its tests, which then fail (test_installed_runtimes_import says why).
DISTRIBUTIONS = {"onnx": ("onnxruntime", "onnx"), "openvino": ("openvino", "nncf"),
                 "tflite": ("ai-edge-litert", "litert-torch"), "executorch": ("executorch",),
                 "ncnn": ("ncnn", "pnnx"), "mnn": ("MNN", "onnx"), "coreml": ("coremltools",)}


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


needs = {fmt: pytest.mark.skipif(not all(map(_installed, dists)), reason=f"{' / '.join(dists)} not installed")
         for fmt, dists in DISTRIBUTIONS.items()}


@pytest.mark.parametrize("fmt", sorted(DISTRIBUTIONS))
def test_installed_runtimes_import(fmt):
    """A runtime whose package is installed must import: a broken install fails here, not as skips."""
    dists = [d for d in DISTRIBUTIONS[fmt] if _installed(d)]
    if not dists:
        pytest.skip(f"{fmt}: not installed")
    for dist in dists:
        module = {"ai-edge-litert": "ai_edge_litert", "litert-torch": "litert_torch"}.get(dist, dist)
        module = {"executorch": "executorch.runtime"}.get(module, module)
        importlib.import_module(module)
    runtime = by_format(fmt)
    assert runtime.version() is not None, f"{runtime.backend} is installed but mobilenets cannot load it"


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
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([result.path.name, result.sidecar.name])


@needs["onnx"]
def test_failed_verification_leaves_nothing(model, tmp_path, monkeypatch):
    monkeypatch.setattr(export_mod, "FP32_TOLERANCE", -1.0)
    with pytest.raises(VerificationError, match="differ from PyTorch"):
        export(model, "onnx", tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, message", [
    (dict(fmt="caffe"), "unknown export format"),
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
    bad = CliRunner().invoke(app, ["export", str(ckpt), "--format", "caffe"])
    assert bad.exit_code == 2 and "unknown export format" in bad.output
    bad = CliRunner().invoke(app, ["export", str(ckpt), "--int8"])
    assert bad.exit_code == 2 and "calibration" in bad.output


@pytest.mark.parametrize("fmt", [pytest.param("onnx", marks=needs["onnx"]),
                                 pytest.param("openvino", marks=needs["openvino"])])
def test_export_cleans_what_a_killed_export_left_and_respects_the_umask(model, tmp_path, fmt):
    """A SIGKILL mid-export leaves its staging folder behind: the next export into the folder
    removes it once it is stale. Files get 0666 less the umask, as a plain open() gives."""
    stale = tmp_path / ".staging-killed"
    stale.mkdir()
    (stale / "fp32.onnx").write_bytes(b"half a file")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    mask = os.umask(0o027)
    try:
        result = export(model, fmt, tmp_path)
    finally:
        os.umask(mask)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f.name for f in [*result.files, result.sidecar])
    for f in [*result.files, result.sidecar]:
        assert stat.S_IMODE(f.stat().st_mode) == 0o640, f


def test_export_checks_its_request_before_any_work(model, tmp_path, monkeypatch):
    """Bad values are one-line UsageErrors raised before the model is resolved or any data read."""
    work = []
    monkeypatch.setattr(export_mod, "resolve_model", lambda *a, **k: work.append("resolve"))
    monkeypatch.setattr(export_mod, "load_images", lambda *a, **k: work.append("calibration"))
    (tmp_path / "a_file").write_text("not a folder")
    cases = [
        (dict(int8=True, calib="/no/such/dir", min_agreement=2), "min_agreement"),
        (dict(int8=True, calib="/no/such/dir", min_agreement=-0.1), "min_agreement"),
        (dict(int8=True, calib="/no/such/dir", calib_size=0), "calib_size"),
        (dict(opset=12), "opset 12"),
        (dict(output=tmp_path / "a_file" / "m.onnx"), "a_file is a file"),
        (dict(output=tmp_path / "a_file"), "a_file is a file"),
        (dict(batch="2"), "batch"),
    ]
    for kw, message in cases:
        with pytest.raises(UsageError, match=message) as err:
            export(model, "onnx", kw.pop("output", tmp_path / "out"), **kw)
        assert "\n" not in str(err.value)
    assert work == [] and not (tmp_path / "out").exists()


@needs["onnx"]
def test_export_takes_what_resolve_model_takes(model, tmp_path):
    """A training run directory exports its best checkpoint; an exported file is not a model to export."""
    from mobilenets.weights.io import save_checkpoint
    save_checkpoint(tmp_path / "run" / "best.safetensors", model, class_names=[f"c{i}" for i in range(10)])
    result = export(tmp_path / "run", "onnx", tmp_path / "out")
    assert result.verification["max_abs_diff"] <= 1e-4
    assert open_session(result.path).class_names[9] == "c9"
    with pytest.raises(UsageError, match="exported file already"):
        export(result.path, "onnx", tmp_path / "again")


def one_line_error(res, code: int = 2) -> str:
    """The CLI's failure: ``code``, one line, no traceback."""
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1, res.output
    return res.output


@pytest.fixture
def ckpt(model, tmp_path):
    from mobilenets.weights.io import save_checkpoint
    return str(save_checkpoint(tmp_path / "m.safetensors", model))


@pytest.mark.parametrize("args, message", [
    (["--int8", "--calib", "CALIB", "--min-agreement", "2"], "--min-agreement"),
    (["--int8", "--calib", "CALIB", "--calib-size", "0"], "--calib-size"),
    (["-o", "FILE/x.onnx"], "is a file"),
    (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", "two"], "--batch-size"),
])
def test_cli_bad_export_requests_are_one_line(ckpt, tmp_path, args, message):
    (tmp_path / "calib").mkdir()
    (tmp_path / "FILE").write_text("a file")
    args = [a.replace("CALIB", str(tmp_path / "calib")).replace("FILE", str(tmp_path / "FILE")) for a in args]
    res = CliRunner().invoke(app, ["export", ckpt, *args])
    assert message in one_line_error(res)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FILE", "calib", "m.safetensors"]


def test_cli_export_weights_that_are_not_a_checkpoint(tmp_path):
    text = tmp_path / "x.pth"
    text.write_text("not a checkpoint\n")
    res = CliRunner().invoke(app, ["export", "mobilenet_v3_small", "-w", str(text), "-o", str(tmp_path / "out")])
    assert "x.pth" in one_line_error(res)
    assert not (tmp_path / "out").exists()


@needs["onnx"]
def test_cli_batch_size_and_its_old_spelling(ckpt, tmp_path):
    res = CliRunner().invoke(app, ["export", ckpt, "--batch-size", "dynamic", "-o", str(tmp_path / "a"), "--json"])
    assert res.exit_code == 0, res.output
    assert open_session(json.loads(res.stdout)["path"]).fixed_batch is None
    res = CliRunner().invoke(app, ["export", ckpt, "--batch", "2", "-o", str(tmp_path / "b"), "--json"])
    assert res.exit_code == 0, res.output
    assert open_session(json.loads(res.stdout)["path"]).fixed_batch == 2
    assert "--batch-size" in CliRunner().invoke(app, ["export", "--help"]).output
