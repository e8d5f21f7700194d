"""The runtime table (``deploy.runtimes``) and the device logic of the GPU paths, checked on the CPU."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from test_export import needs, trained_like

from mobilenets.core.errors import UsageError
from mobilenets.core.files import publish
from mobilenets.deploy import runtimes
from mobilenets.deploy.graph import deploy_module, fold_hardsigmoid
from mobilenets.deploy.runtimes import RUNTIMES, by_format, by_suffix, open_session
from mobilenets.deploy.runtimes.onnxruntime import providers
from mobilenets.deploy.runtimes.pytorch import TorchSession, check_mode
from mobilenets.measure.bench import installed_backends
from mobilenets.weights.resolve import EXPORT_SUFFIXES


def test_every_format_is_a_complete_runtime_and_the_resolver_knows_its_suffix():
    formats = [r for r in RUNTIMES.values() if r.format]
    assert {r.format for r in formats} >= {"onnx", "openvino", "tflite", "executorch", "ncnn", "mnn", "coreml"}
    for r in formats:
        assert r.suffix and r.convert and r.session, r.backend
        assert "fp32" in r.export_precisions and by_format(r.format) is r
        assert (r.quantize is not None) == ("int8" in r.export_precisions) or r.int8_note, r.backend
    assert {r.suffix for r in formats} == set(EXPORT_SUFFIXES)
    assert [r.backend for r in by_suffix(".onnx")][:2] == ["onnxruntime", "openvino"]
    with pytest.raises(UsageError, match="unknown export format 'caffe'"):
        by_format("caffe")


@pytest.mark.parametrize("backend", sorted(b for b, r in RUNTIMES.items() if r.module != "torch"))
def test_a_missing_runtime_is_one_line_naming_its_pip_package(backend, monkeypatch):
    runtime = dataclasses.replace(RUNTIMES[backend], module="no_such_module_xyz")
    monkeypatch.setitem(RUNTIMES, backend, runtime)
    with pytest.raises(UsageError, match=f"pip install {runtime.package}") as err:
        runtimes.require(backend)
    assert "\n" not in str(err.value)
    assert runtimes.available_backends()[backend] is None


def test_int8_of_a_runtime_without_a_quantizer_says_why(tmp_path):
    from mobilenets.deploy.export import export
    with pytest.raises(UsageError, match="ncnn export writes fp32, not int8 .*ncnn2int8.*int8 exports: onnx"):
        export(trained_like(res=32), "ncnn", tmp_path, int8=True, calib=np.zeros((4, 3, 32, 32), np.float32))
    assert list(tmp_path.iterdir()) == []


@needs["coreml"]
def test_coreml_is_checked_not_run_on_linux(tmp_path):
    from mobilenets.deploy.export import export
    r = export(trained_like(res=32), "coreml", tmp_path)
    assert r.path.is_dir() and r.path.suffix == ".mlpackage" and r.sidecar.is_file()
    assert r.verification["ran"] is False and r.verification["ops"] > 0
    assert r.verification["input"]["name"] == "input" and r.verification["output"]["name"] == "logits"
    with pytest.raises(UsageError, match="macOS"):
        open_session(r.path)
    q = export(trained_like(res=32), "coreml", tmp_path.parent / f"{tmp_path.name}-q", int8=True)  # no images
    assert q.verification["int8"] and q.size_bytes < r.size_bytes
    again = export(trained_like(res=32), "coreml", r.path)  # a package folder is replaced whole
    assert again.path == r.path and sorted(p.name for p in tmp_path.iterdir()) == sorted([r.path.name,
                                                                                           r.sidecar.name])


def test_publish_replaces_a_folder_atomically(tmp_path):
    old, new = tmp_path / "m.mlpackage", tmp_path / ".stage" / "m.mlpackage"
    (old / "Data").mkdir(parents=True)
    (old / "Data" / "old.bin").write_bytes(b"old")
    (new / "Data").mkdir(parents=True)
    (new / "Data" / "new.bin").write_bytes(b"new")
    publish(new, old)
    assert [p.name for p in (old / "Data").iterdir()] == ["new.bin"] and not new.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name != ".stage"] == ["m.mlpackage"]


# ------------------------------------------------------------------------------------------
# GPU paths: the decisions, made without a GPU


def test_cuda_without_a_gpu_is_a_usage_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model = trained_like(res=32)
    for backend in ("torch", "compile", "cudagraphs"):
        with pytest.raises(UsageError, match="no CUDA GPU"):
            open_session(model, backend, device="cuda")
    from mobilenets.measure.bench import bench
    with pytest.raises(UsageError, match="no CUDA GPU"):
        bench(["mobilenet_v3_small_050"], device="cuda")


def test_modes_and_precisions_per_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    check_mode("cudagraphs", cuda, "fp16")
    check_mode("torch", cuda, "fp16")
    with pytest.raises(UsageError, match="add --device cuda"):
        check_mode("cudagraphs", cpu, "fp32")
    with pytest.raises(UsageError, match="fp16 in PyTorch runs on CUDA"):
        check_mode("torch", cpu, "fp16")
    with pytest.raises(UsageError, match="int8 runs on the exported runtimes"):
        check_mode("compile", cuda, "int8")


def test_onnxruntime_providers_for_each_device():
    cpu_only = ["CPUExecutionProvider"]
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert providers("cpu", cpu_only) == cpu_only
    assert providers("cuda", gpu) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert providers("tensorrt", gpu) == gpu
    assert providers("tensorrt", gpu[::-1]) == gpu  # our order, not the probe's
    with pytest.raises(UsageError, match="no CUDAExecutionProvider.*pip install onnxruntime-gpu"):
        providers("cuda", cpu_only)
    with pytest.raises(UsageError, match="TensorrtExecutionProvider.*TensorRT"):
        providers("tensorrt", gpu[1:])


def test_bench_on_cuda_times_only_what_runs_on_a_gpu(monkeypatch):
    from mobilenets.measure import bench as bench_mod
    have = {b: "1.0" for b in RUNTIMES}
    monkeypatch.setattr(bench_mod, "runtime_versions", lambda: have)
    use, notes = installed_backends(None, "cuda")
    assert use == ["torch", "cudagraphs", "onnxruntime", "tensorrt"] and notes == []
    use, notes = installed_backends(["torch", "ncnn"], "cuda")
    assert use == ["torch"] and notes == ["backend ncnn runs on the CPU, not cuda"]
    cpu_default, _ = installed_backends(None, "cpu")
    assert "cudagraphs" not in cpu_default and "tensorrt" not in cpu_default and "ncnn" in cpu_default


def test_cuda_graph_replay_keeps_one_graph_per_shape(monkeypatch):
    """The replay logic (static buffers per input shape) with the capture faked: what runs on a GPU."""
    model = trained_like(res=32)
    s = TorchSession(model)  # cpu; the replay path is exercised directly
    captured = []

    class FakeGraph:
        def __init__(self, fn, static_in, static_out):
            self.fn, self.static_in, self.static_out = fn, static_in, static_out

        def replay(self):
            self.static_out.copy_(self.fn(self.static_in))

    def capture(t):
        static_in = t.clone()
        with torch.no_grad():
            static_out = model(static_in)
        captured.append(tuple(t.shape))
        return FakeGraph(lambda x: model(x).detach(), static_in, static_out), static_in, static_out

    monkeypatch.setattr(s, "_capture", capture)
    x1 = np.random.default_rng(0).standard_normal((2, 3, 32, 32), dtype=np.float32)
    x2 = np.random.default_rng(1).standard_normal((2, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        ref1, ref2 = model(torch.from_numpy(x1)).numpy(), model(torch.from_numpy(x2)).numpy()
    assert np.allclose(s._replay(torch.from_numpy(x1)), ref1, atol=1e-5)
    assert np.allclose(s._replay(torch.from_numpy(x2)), ref2, atol=1e-5)  # same graph, new input copied in
    s._replay(torch.from_numpy(x1[:1]))
    assert captured == [(2, 3, 32, 32), (1, 3, 32, 32)]


# ------------------------------------------------------------------------------------------
# ExecuTorch: the whole network in the XNNPACK delegate


def test_folded_hardsigmoid_computes_the_same_gate():
    model = trained_like(res=32)
    d = deploy_module(model)
    folded = fold_hardsigmoid(deploy_module(model))
    assert not any(isinstance(m, torch.nn.Hardsigmoid) for m in folded.modules())
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert (d(x) - folded(x)).abs().max() < 1e-5


@needs["executorch"]
def test_executorch_delegates_every_operator_and_refuses_a_split_graph(tmp_path):
    from mobilenets.deploy.common import ExportError
    from mobilenets.deploy.runtimes.executorch import _lower, delegation, for_xnnpack, write_program
    d = deploy_module(trained_like(res=32))
    x = torch.randn(1, 3, 32, 32)
    ours = delegation(_lower(torch.export.export(for_xnnpack(d), (x,))))
    assert ours == {"delegate_calls": 1, "not_delegated": {}}
    # the module as the tutorial lowers it: hard-sigmoid's constants run outside the delegate
    plain = torch.export.export(d, (x,))
    assert delegation(_lower(plain))["not_delegated"]
    with pytest.raises(ExportError, match="does not run the whole network.*operators left out: "):
        write_program(torch.export.export(d, (x,)), tmp_path / "m.pte")
    assert not (tmp_path / "m.pte").exists()


@needs["ncnn"]
def test_predict_on_another_backend_converts_the_model_first(tmp_path):
    from PIL import Image

    from mobilenets.predict import predict
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    model = trained_like(res=32)
    own = predict(model, tmp_path, top=3, device="cpu")
    got = predict(model, tmp_path, top=3, backend="ncnn")
    assert got.model == "ncnn" and len(got.predictions) == 3
    for a, b in zip(own.predictions, got.predictions, strict=True):
        assert [t.index for t in a.top] == [t.index for t in b.top]
        assert np.allclose([t.prob for t in a.top], [t.prob for t in b.top], atol=1e-4)
    with pytest.raises(UsageError, match="add --device cuda|no CUDA GPU"):
        predict(model, tmp_path, backend="cudagraphs", device="cpu")


def test_probing_the_runtimes_prints_nothing():
    """Importing a runtime to see whether it is installed must not leak its banners into our output
    (ExecuTorch's CPU probe and torch's pytree warning come at import)."""
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-c", "from mobilenets.deploy.runtimes import available_backends as a; a()"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout == "" and done.stderr == "", done.stdout + done.stderr
