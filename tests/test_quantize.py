"""int8: calibration data, ONNX Runtime QDQ, OpenVINO NNCF and TFLite PT2E, verification and the report."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_export import needs, trained_like
from typer.testing import CliRunner

from mobilenets.cli import app
from mobilenets.cli import deploy as cli_deploy
from mobilenets.core.errors import UsageError
from mobilenets.core.preprocessing import imagenet
from mobilenets.deploy import runtimes
from mobilenets.deploy.calibration import load_images
from mobilenets.deploy.export import VerificationError, export
from mobilenets.deploy.runtimes import open_session

CLASSES = ("cat", "dog", "fox")


def _class_folders(root, seed: int, per_class: int):
    """One folder per class of smooth random images with a per-class colour cast (what a photo looks
    like to a small net); ``seed`` tells sets apart."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir()
        for i in range(per_class):
            small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
            small[..., c] = 255
            Image.fromarray(small).resize((48, 48), Image.BILINEAR).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """Three class folders of 8 images each: the calibration images."""
    return _class_folders(tmp_path_factory.mktemp("calib"), seed=0, per_class=8)


@pytest.fixture(scope="module")
def val_dir(tmp_path_factory):
    """Held-out images of the same classes (another seed): what accuracy figures are measured on."""
    return _class_folders(tmp_path_factory.mktemp("val"), seed=1, per_class=6)


@pytest.fixture(scope="module")
def model():
    return trained_like()


def test_calibration_folder_of_classes(image_dir):
    s = load_images(image_dir, imagenet(64), limit=7)
    assert s.images.shape == (7, 3, 64, 64) and s.images.dtype == np.float32
    assert s.class_names == list(CLASSES) and set(s.labels.tolist()) == {0, 1, 2}  # classes interleaved


def test_calibration_plain_images_and_arrays(image_dir, tmp_path):
    for i, f in enumerate(sorted(image_dir.rglob("*.png"))[:3]):
        (tmp_path / f"{i}.png").write_bytes(f.read_bytes())
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    s = load_images(tmp_path, imagenet(64))
    assert len(s) == 3 and s.labels is None and s.class_names is None
    arr = np.zeros((5, 3, 8, 8), np.float32)
    assert load_images(arr, imagenet(8), limit=2).images.shape == (2, 3, 8, 8)
    with pytest.raises(UsageError, match="N x C x H x W"):
        load_images(np.zeros((3, 8, 8)), imagenet(8))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no images"):
        load_images(tmp_path / "empty", imagenet(8))


@needs["onnx"]
def test_onnx_int8_qdq_per_channel_with_report(model, image_dir, val_dir, tmp_path):
    import onnx
    r = export(model, "onnx", tmp_path, int8=True, calib=image_dir, report=True, val=val_dir)
    assert r.path.name == "mobilenet_v3_small-w0.5-r64-onnx-int8.onnx" and r.precision == "int8"
    v = r.verification
    assert v["images"] == 18 and v["top1_agreement"] >= 0.5 and {"top1_torch", "top1_export"} <= set(v)
    proto = onnx.load(str(r.path))
    ops = Counter(n.op_type for n in proto.graph.node)
    assert ops["QuantizeLinear"] and ops["DequantizeLinear"]
    inits = {i.name: i for i in proto.graph.initializer}
    weight_dq = [n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
                 and len(inits[n.input[0]].dims) == 4]
    assert weight_dq and all(len(inits[n.input[1]].dims) == 1 for n in weight_dq)  # per-channel scales
    rep = r.report
    assert rep["size_bytes"]["int8"] < rep["size_bytes"]["fp32"] / 2
    assert set(rep["top1"]) == {"fp32", "int8"} and rep["latency_ms"]["int8"]["median_ms"] > 0
    assert rep["images"] == 18 and rep["validation"]["images"] == 18 and rep["calibration"]["images"] == 24
    assert rep["validation"]["source"] == str(val_dir) and rep["calibration"]["source"] == str(image_dir)
    side = json.loads(r.sidecar.read_text())
    assert side["precision"] == "int8" and side["quantization_report"]["speedup"] > 0
    assert open_session(r.path).precision == "int8"


@needs["openvino"]
def test_openvino_int8_nncf(model, image_dir, tmp_path):
    r = export(model, "openvino", tmp_path, int8=True, calib=image_dir)
    assert r.path.name.endswith("-openvino-int8.xml") and r.verification["top1_agreement"] >= 0.5
    assert "FakeQuantize" in r.path.read_text() or "u8" in r.path.read_text()


@needs["tflite"]
def test_tflite_int8(model, image_dir, tmp_path):
    r = export(model, "tflite", tmp_path, int8=True, calib=image_dir, nhwc=True)
    s = open_session(r.path)
    ops = Counter(o["op_name"] for o in s.interp._get_ops_details())
    assert r.verification["top1_agreement"] >= 0.5 and ops["QUANTIZE"] + ops["DEQUANTIZE"] > 0


@needs["onnx"]
def test_int8_below_the_agreement_floor_is_discarded(model, image_dir, tmp_path, monkeypatch):
    """A runtime whose top-1 disagrees with PyTorch (its logits shifted by one class) fails the
    floor, and the quantized file is not kept."""
    shifted = runtimes.onnxruntime.OrtSession._run
    monkeypatch.setattr(runtimes.onnxruntime.OrtSession, "_run", lambda self, x: np.roll(shifted(self, x), 1, axis=1))
    with pytest.raises(VerificationError, match="agrees with PyTorch"):
        export(model, "onnx", tmp_path, int8=True, calib=image_dir, min_agreement=0.5)
    assert list(tmp_path.iterdir()) == []


@needs["onnx"]
def test_cli_int8_report(model, image_dir, val_dir, tmp_path):
    from mobilenets.weights.io import save_checkpoint
    ckpt = save_checkpoint(tmp_path / "m.safetensors", model)
    args = ["export", str(ckpt), "--int8", "--calib", str(image_dir), "--report", "-o", str(tmp_path / "out")]
    res = CliRunner().invoke(app, [*args, "--val", str(val_dir)])
    assert res.exit_code == 0, res.output
    assert "top-1 agreement" in res.output and "latency fp32 / int8" in res.output
    assert "measured on" in res.output and "18 images" in res.output
    # without held-out images there is no accuracy figure to give: a one-line error, nothing written
    bad = CliRunner().invoke(app, [*args[:-2], "-o", str(tmp_path / "out2")])
    assert bad.exit_code == 2 and "held-out" in bad.output and not (tmp_path / "out2").exists()
    # validation images that are calibration images are refused
    same = CliRunner().invoke(app, [*args[:-2], "-o", str(tmp_path / "out3"), "--val", str(image_dir)])
    assert same.exit_code == 2 and "share" in same.output


def test_cli_verification_failure_exits_1(model, tmp_path, monkeypatch):
    from mobilenets.weights.io import save_checkpoint

    def failing(*a, **kw):
        raise VerificationError("int8 model agrees with PyTorch on top-1 for 10% of 24 images")
    monkeypatch.setattr(cli_deploy, "export", failing)
    ckpt = save_checkpoint(tmp_path / "m.safetensors", model)
    bad = CliRunner().invoke(app, ["export", str(ckpt), "--int8", "--calib", str(tmp_path)])
    assert bad.exit_code == 1 and "verification failed" in bad.output


@pytest.mark.parametrize("fmt", [pytest.param("onnx", marks=needs["onnx"]),
                                 pytest.param("openvino", marks=needs["openvino"])])
def test_cli_export_prints_its_own_lines_only(model, image_dir, tmp_path, fmt):
    """In a real process (no pytest log capture), the quantizers' log lines (ORT's ``WARNING:root:``,
    NNCF's INFO lines), colour codes and C++ warnings stay out; stderr holds one line per finished step."""
    from mobilenets.weights.io import save_checkpoint
    ckpt = save_checkpoint(tmp_path / "m.safetensors", model)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "mobilenets", "export", str(ckpt), "--format", fmt, "--int8",
                           "--calib", str(image_dir), "-o", str(tmp_path / "out")], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    both = proc.stdout + proc.stderr
    assert "WARNING:root" not in both and "INFO:nncf" not in both and "\x1b[" not in both, both
    steps = [line.split(": done in ")[0] for line in proc.stderr.strip().splitlines()]
    assert steps == ["read calibration data", "trace", "write", "calibrate and quantize", "verify", "install"], \
        proc.stderr
    assert "top-1 agreement" in proc.stdout
