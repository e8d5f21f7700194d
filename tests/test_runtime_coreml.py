"""Core ML export (coremltools): packages are converted and inspected here; they run only on macOS."""
from __future__ import annotations

import sys

import pytest
import torch

pytest.importorskip("coremltools")

from mobilenets.core.errors import UsageError  # noqa: E402
from mobilenets.deploy.common import ExportError, quiet  # noqa: E402
from mobilenets.deploy.graph import deploy_module  # noqa: E402
from mobilenets.deploy.runtimes.coreml import (  # noqa: E402
    RUNTIME,
    CoreMLSession,
    inspect_coreml,
    quantize_coreml,
    runs_here,
    to_coreml,
)
from mobilenets.weights import create_model  # noqa: E402

linux_only = pytest.mark.skipif(sys.platform == "darwin", reason="Core ML runs on macOS")


def tiny(variant: str = "mobilenet_v3_small"):
    return deploy_module(create_model(variant, width=0.35, resolution=32, num_classes=5).eval())


@pytest.fixture(scope="module")
def fp32_package(tmp_path_factory):
    path = tmp_path_factory.mktemp("coreml") / "model.mlpackage"
    to_coreml(tiny(), torch.randn(1, 3, 32, 32), path)
    return path


def test_fp32_package_is_inspected(fp32_package):
    assert fp32_package.is_dir() and (fp32_package / "Manifest.json").is_file()
    info = inspect_coreml(fp32_package)
    assert info["input"] == {"name": "input", "shape": (1, 3, 32, 32), "dtype": "float32"}
    assert info["output"]["name"] == "logits" and info["output"]["shape"] == (1, 5) and info["classes"] == 5
    assert info["ops"] > 0 and info["op_types"]["conv"] > 0 and info["constants"] > 0
    assert info["precision"] == "fp32" and not info["int8"] and info["float_weights"] > 0
    assert info["deployment_target"] == "iOS16" and info["size_bytes"] > 0


def test_fp16_package_computes_in_fp16_with_float32_io(tmp_path):
    path = tmp_path / "model.mlpackage"
    to_coreml(tiny(), torch.randn(1, 3, 32, 32), path, precision="fp16")
    info = inspect_coreml(path)
    assert info["precision"] == "fp16"
    assert info["input"]["dtype"] == info["output"]["dtype"] == "float32"


def test_int8_weights_make_a_smaller_package(fp32_package, tmp_path):
    dst = quantize_coreml(fp32_package, tmp_path / "int8.mlpackage", calib=None)
    info = inspect_coreml(dst)
    assert info["int8"] and info["int8_weights"] > 0
    assert info["precision"] == "fp32" and info["input"]["name"] == "input"
    assert info["size_bytes"] < inspect_coreml(fp32_package)["size_bytes"]


def test_dynamic_batch_and_exact_path(tmp_path):
    path = tmp_path / "model.tmp"  # written at exactly this path, whatever its suffix
    path.write_text("an older file")
    to_coreml(tiny(), torch.randn(2, 3, 32, 32), path, dynamic=True)
    info = inspect_coreml(path)
    assert path.is_dir() and [p.name for p in tmp_path.iterdir()] == ["model.tmp"]
    assert info["input"]["shape"] == (None, 3, 32, 32) and info["classes"] == 5


@pytest.mark.parametrize("variant", ["mobilenet_v2", "mobilenext"])
def test_other_families_convert(variant, tmp_path):
    path = tmp_path / "model.mlpackage"
    to_coreml(tiny(variant), torch.randn(1, 3, 32, 32), path)
    info = inspect_coreml(path)
    assert info["op_types"]["conv"] > 0 and info["classes"] == 5


@linux_only
def test_session_says_macos(fp32_package):
    assert "macOS" in runs_here()
    with pytest.raises(UsageError, match="macOS"):
        CoreMLSession(fp32_package)
    assert RUNTIME.session is CoreMLSession and RUNTIME.runs_here() == runs_here()


def test_not_a_package_is_a_usage_error(tmp_path, fp32_package):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("not a model")
    with pytest.raises(UsageError, match="not a readable Core ML package"):
        inspect_coreml(tmp_path / "plain")
    with pytest.raises(UsageError, match="not a Core ML package"):
        inspect_coreml(fp32_package / "Manifest.json")
    with pytest.raises(ExportError, match="quantization failed"):
        quantize_coreml(tmp_path / "plain", tmp_path / "int8.mlpackage")


def test_wrong_interface_is_a_usage_error(tmp_path):
    import coremltools as ct
    with quiet():
        m = torch.jit.trace(torch.nn.Flatten().eval(), torch.randn(1, 3, 4, 4))
        mlmodel = ct.convert(m, inputs=[ct.TensorType(name="pixels", shape=(1, 3, 4, 4))], convert_to="mlprogram")
    mlmodel.save(str(tmp_path / "other.mlpackage"))
    with pytest.raises(UsageError, match="not one 'input'"):
        inspect_coreml(tmp_path / "other.mlpackage")
