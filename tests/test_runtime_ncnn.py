"""The ncnn runtime: pnnx export to .param + .bin, sessions that compute what the torch module computes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("ncnn")
pytest.importorskip("pnnx")

from mobilenets.core.errors import UsageError  # noqa: E402
from mobilenets.deploy.common import ExportError  # noqa: E402
from mobilenets.deploy.graph import deploy_module  # noqa: E402
from mobilenets.deploy.runtimes.ncnn import RUNTIME, NcnnSession, to_ncnn  # noqa: E402
from mobilenets.weights import create_model  # noqa: E402

RES = 32


def trained_like(name: str) -> nn.Module:
    """A width-0.35 model whose activations and logits are O(1): BN statistics of a random batch, perturbed
    affine parameters, a classifier rescaled to unit-spread logits (random init gives logits ~1e-8)."""
    net = create_model(name, width=0.35, resolution=RES, num_classes=5)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, RES, RES, generator=g)
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        net.train()
        net(x)
        for m in bns:
            m.weight.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.75)
            m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
        net.eval()
        net.classifier.weight /= net(x).std()
    return net


def export(name: str, folder) -> tuple[nn.Module, object]:
    module = deploy_module(trained_like(name)).eval()
    path = folder / "model.param"
    to_ncnn(module, torch.randn(1, 3, RES, RES), path)
    return module, path


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return export("mobilenet_v3_small", tmp_path_factory.mktemp("v3s"))


def logits(module: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return module(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "mobilenet_v2", "mobilenext"])
def test_export_writes_param_and_bin_that_match_torch(name, tmp_path):
    module, path = export(name, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin", "model.param"]

    session = NcnnSession(path)
    assert (session.input_name, session.output_name) == ("in0", "out0")  # read back from the file
    assert session.input_shape == (1, 3, RES, RES) and session.fixed_batch == 1 and session.resolution == RES
    rng = np.random.default_rng(0)
    for n in (1, 3, 1):  # a batch of 3 runs image by image
        x = rng.standard_normal((n, 3, RES, RES), dtype=np.float32)
        ref = logits(module, x)
        assert np.abs(ref).max() > 0.1  # logits that test something (random init gives ~1e-8)
        out = session.run(x)
        assert out.shape == (n, 5) and out.dtype == np.float32
        assert np.abs(out - ref).max() < 1e-4


def test_runner_and_threads(small):
    module, path = small
    x = np.random.default_rng(1).standard_normal((1, 3, RES, RES), dtype=np.float32)
    ref = logits(module, x)
    for threads in (1, 2):
        session = NcnnSession(path, threads=threads)
        assert np.abs(session.runner(x)() - ref).max() < 1e-4


def test_fp16_and_bf16_storage_run_close(small):
    module, path = small
    x = np.random.default_rng(2).standard_normal((8, 3, RES, RES), dtype=np.float32)
    ref = logits(module, x)
    fp16 = NcnnSession(path, precision="fp16").run(x)
    bf16 = NcnnSession(path, precision="bf16").run(x)
    assert np.abs(fp16 - ref).max() < 0.05
    assert np.corrcoef(bf16.ravel(), ref.ravel())[0, 1] > 0.95


def test_broken_files_are_usage_errors(tmp_path):
    good = tmp_path / "good.param"
    good.write_text("7767517\n1 1\nInput in0 0 1 in0 0=4 1=4 2=3\n")
    (tmp_path / "good.bin").write_bytes(b"")
    assert NcnnSession(good).input_shape == (1, 3, 4, 4)

    cases = {"garbage": "this is not an ncnn model\n",
             "unknown_layer": "7767517\n2 2\nInput in0 0 1 in0\nNoSuchLayer l0 1 1 in0 out0\n",
             "truncated": "7767517\n5 5\nInput in0 0 1 in0\n"}
    for stem, text in cases.items():
        (tmp_path / f"{stem}.param").write_text(text)
        (tmp_path / f"{stem}.bin").write_bytes(b"\0" * 64)
        with pytest.raises(UsageError, match="ncnn cannot load"):
            NcnnSession(tmp_path / f"{stem}.param")
    (tmp_path / "nobin.param").write_text(good.read_text())
    with pytest.raises(UsageError, match=r"nobin\.bin"):
        NcnnSession(tmp_path / "nobin.param")


def test_weights_that_do_not_fit_are_usage_errors(small, tmp_path):
    _, path = small
    (tmp_path / "model.param").write_text(path.read_text())
    (tmp_path / "model.bin").write_bytes(path.with_suffix(".bin").read_bytes()[:100])
    with pytest.raises(UsageError, match="ncnn cannot load"):
        NcnnSession(tmp_path / "model.param")


class Erfinv(nn.Module):
    def forward(self, x):
        return torch.erfinv(x.clamp(-0.5, 0.5))


def test_an_op_ncnn_lacks_is_an_export_error(tmp_path):
    with pytest.raises(ExportError, match="pnnx conversion failed: ncnn has no layer for aten::erfinv"):
        to_ncnn(Erfinv(), torch.randn(1, 3, 8, 8), tmp_path / "model.param")
    assert list(tmp_path.iterdir()) == []


def test_runtime_record_and_no_int8():
    assert RUNTIME.files == (".param", ".bin") and not RUNTIME.dynamic_batch
    assert RUNTIME.convert is to_ncnn and RUNTIME.session is NcnnSession
    assert RUNTIME.quantize is None and RUNTIME.int8_note
    assert RUNTIME.export_precisions == ("fp32",)
    with pytest.raises(UsageError, match="ncnn2int8"):
        RUNTIME.require_export("int8")
