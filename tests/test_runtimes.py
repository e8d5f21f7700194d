"""The Session API: one interface over PyTorch, ONNX Runtime, OpenVINO and LiteRT."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mobilenets import create_model
from mobilenets.core.errors import UsageError
from mobilenets.deploy import runtimes
from mobilenets.deploy.export import export
from mobilenets.deploy.runtimes import BACKENDS, available_backends, interleaved_latency, open_session
from mobilenets.weights.io import save_checkpoint

INSTALLED = available_backends()


def _model():
    return create_model("mobilenet_v3_small", width=0.5, num_classes=10, resolution=64).eval()


def test_available_backends_names_every_backend():
    assert tuple(INSTALLED) == BACKENDS
    assert INSTALLED["torch"] == torch.__version__.split("+")[0]


def test_torch_session_matches_the_module():
    model = _model()
    s = open_session(model)
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64), dtype=np.float32)
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    assert s.backend == "torch" and s.input_layout == "NCHW"
    np.testing.assert_allclose(s.run(x), ref, atol=1e-6)
    assert s.preprocessing.resolution == 64 and s.class_names is None


def test_bf16_torch_session_is_close():
    model = _model()
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64), dtype=np.float32)
    y32 = open_session(model).run(x)
    y16 = open_session(model, precision="bf16").run(x)
    assert y16.dtype == np.float32 and np.abs(y16 - y32).max() < 0.1 * (np.abs(y32).max() + 1e-3)


def test_checkpoint_session_reads_metadata(tmp_path):
    model = _model()
    path = save_checkpoint(tmp_path / "m.safetensors", model, class_names=[f"c{i}" for i in range(10)])
    s = open_session(path)
    assert s.backend == "torch" and s.class_names[3] == "c3"
    x = np.zeros((1, 3, 64, 64), np.float32)
    np.testing.assert_allclose(s.run(x), open_session(model).run(x), atol=1e-6)


@pytest.mark.parametrize("bad, message", [
    (lambda p: open_session(p / "nope.onnx"), "no such model file"),
    (lambda p: open_session(_touch(p / "m.weird")), "cannot tell the runtime"),
    (lambda p: open_session(_model(), "no_such_backend"), "unknown backend"),
    (lambda p: open_session(_model()).run(np.zeros((3, 64, 64), np.float32)), "N x C x H x W"),
    (lambda p: open_session(_model(), threads=0), "threads"),
    (lambda p: open_session(_model(), precision="int8"), "int8"),
])
def test_bad_input_is_a_usage_error(tmp_path, bad, message):
    with pytest.raises(UsageError, match=message):
        bad(tmp_path)


def _touch(path):
    path.write_bytes(b"x")
    return path


def test_missing_runtime_names_the_pip_package(monkeypatch, tmp_path):
    import dataclasses
    broken = dataclasses.replace(runtimes.RUNTIMES["openvino"], module="no_such_module_xyz")
    monkeypatch.setitem(runtimes.RUNTIMES, "openvino", broken)
    assert runtimes.available_backends()["openvino"] is None
    with pytest.raises(UsageError, match="needs openvino: pip install openvino"):
        open_session(_touch(tmp_path / "m.xml"))


def test_fixed_batch_files_run_any_batch_and_nhwc_is_transposed():
    class Fake(runtimes.Session):
        backend = "fake"

        def _run(self, x):
            assert x.shape[0] == 2 and x.shape[-1] == 3  # chunks of the fixed batch, NHWC
            return x.mean(axis=(1, 2))

    s = Fake(meta={"input_layout": "NHWC"})
    s.fixed_batch = 2
    x = np.random.default_rng(0).standard_normal((5, 3, 4, 4), dtype=np.float32)
    np.testing.assert_allclose(s.run(x), x.mean(axis=(2, 3)), atol=1e-6)


def test_interleaved_latency_reports_median_and_p90():
    s = open_session(_model())
    out = interleaved_latency({"a": s, "b": s}, np.zeros((1, 3, 64, 64), np.float32), warmup=1, rounds=2,
                              per_round=2)
    assert set(out) == {"a", "b"} and out["a"]["runs"] == 4 and out["a"]["p90_ms"] >= out["a"]["median_ms"] > 0


@pytest.mark.skipif(INSTALLED["onnxruntime"] is None, reason="onnxruntime not installed")
def test_a_module_opens_on_another_backend():
    model = _model()
    s = open_session(model, "onnxruntime")
    x = np.random.default_rng(1).standard_normal((3, 3, 64, 64), dtype=np.float32)
    assert s.backend == "onnxruntime" and s.fixed_batch is None
    np.testing.assert_allclose(s.run(x), open_session(model).run(x), atol=1e-4)


@pytest.mark.parametrize("backend, nhwc", [
    pytest.param("onnxruntime", False, marks=pytest.mark.skipif(INSTALLED["onnxruntime"] is None, reason="no ORT")),
    pytest.param("onnxruntime", True, marks=pytest.mark.skipif(INSTALLED["onnxruntime"] is None, reason="no ORT")),
    pytest.param("openvino", True, marks=pytest.mark.skipif(INSTALLED["openvino"] is None, reason="no openvino")),
])
def test_an_export_without_its_sidecar_takes_its_input_from_the_graph(tmp_path, backend, nhwc):
    """Without the JSON sidecar a session still knows the file's input: shape, layout and resolution
    (a 32 px model is fed 32 px images, not a default 224)."""
    model = create_model("mobilenet_v3_small", width=0.35, num_classes=5, resolution=32).eval()
    fmt = {"onnxruntime": "onnx", "openvino": "openvino"}[backend]
    result = export(model, fmt, tmp_path, nhwc=nhwc, verify=False)
    result.sidecar.unlink()
    s = open_session(result.path)
    assert s.backend == backend and s.preprocessing is None and s.meta == {}
    assert s.input_shape == ((1, 32, 32, 3) if nhwc else (1, 3, 32, 32))
    assert s.resolution == 32 and s.input_layout == ("NHWC" if nhwc else "NCHW") and s.fixed_batch == 1
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32), dtype=np.float32)
    np.testing.assert_allclose(s.run(x), open_session(model).run(x), atol=1e-4)


def test_sessions_take_what_resolve_model_takes(tmp_path):
    """A training run directory opens its best checkpoint; a checkpoint opens on another backend."""
    model = _model()
    save_checkpoint(tmp_path / "run" / "best.safetensors", model, class_names=[f"c{i}" for i in range(10)])
    s = open_session(tmp_path / "run")
    assert s.backend == "torch" and s.class_names[3] == "c3" and s.input_shape == (None, 3, 64, 64)
    if INSTALLED["onnxruntime"] is not None:
        x = np.random.default_rng(2).standard_normal((2, 3, 64, 64), dtype=np.float32)
        o = open_session(tmp_path / "run" / "best.safetensors", "onnxruntime")
        assert o.backend == "onnxruntime" and o.class_names[3] == "c3" and o.resolution == 64 and o.path is None
        np.testing.assert_allclose(o.run(x), s.run(x), atol=1e-4)
    with pytest.raises(UsageError, match="not a training run directory"):
        open_session(tmp_path)


@pytest.mark.skipif(INSTALLED["litert"] is None, reason="LiteRT not installed")
def test_a_litert_session_prints_nothing(tmp_path):
    """LiteRT's delegate announces itself on stderr ("INFO: Created TensorFlow Lite XNNPACK delegate");
    predict, eval and bench print only their own output. Run in a subprocess: the line comes from C++."""
    import subprocess
    import sys

    model = create_model("mobilenet_v3_small", width=0.35, num_classes=5, resolution=32).eval()
    path = export(model, "tflite", tmp_path, verify=False).path
    code = ("import numpy as np, sys; from mobilenets.deploy.runtimes import open_session; "
            f"s = open_session({str(path)!r}); s.run(np.zeros((1, 3, 32, 32), np.float32))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout == "" and done.stderr == ""
