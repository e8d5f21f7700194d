"""MNN: fp32 export equals the torch module, int8 from MNN's quantization tool, load errors are one line."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("MNN")

from mobilenets.core.errors import UsageError  # noqa: E402
from mobilenets.deploy.common import ExportError  # noqa: E402
from mobilenets.deploy.graph import deploy_module  # noqa: E402
from mobilenets.deploy.runtimes.mnn import MNNSession, quantize_mnn, to_mnn  # noqa: E402
from mobilenets.weights import create_model  # noqa: E402

RES = 32


def _net(name="mobilenet_v3_small", **kw):
    """A tiny model whose logits depend on its input: BN statistics measured on smooth images (with its initial
    statistics, a random MobileNet's logits are all but constant), BN scales below 1 (larger ones make a random
    network chaotic: no int8 of it agrees with its fp32 top-1), a random classifier."""
    net = create_model(name, width=0.35, resolution=RES, num_classes=5, **kw)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=g) * 0.3 + 0.2)
                m.bias.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
                m.momentum = None  # cumulative average over the batches below
                m.reset_running_stats()
        net.classifier.weight.normal_(0, 0.02, generator=g)
        net.train()(torch.from_numpy(_smooth_images(64, seed=99)))
    return net.eval()


def _export(tmp_path, net, batch=1, name="model.mnn"):
    module = deploy_module(net)
    path = tmp_path / name
    to_mnn(module, torch.zeros(batch, 3, RES, RES), path)
    return module, path


def _images(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, RES, RES), dtype=np.float32)


@pytest.mark.parametrize("name, kw", [("mobilenet_v3_small", {}), ("mobilenet_v2", {}),
                                      ("mobilenext", dict(identity_mult=0.5))])
def test_fp32_file_equals_the_module(tmp_path, name, kw):
    module, path = _export(tmp_path, _net(name, **kw))
    assert [p.name for p in tmp_path.iterdir()] == ["model.mnn"]
    s = MNNSession(path)
    assert s.backend == "mnn" and s.input_shape == (1, 3, RES, RES) and s.fixed_batch == 1 and s.resolution == RES
    for n in (1, 3):
        x = _images(n, seed=n)
        with torch.no_grad():
            ref = module(torch.from_numpy(x)).numpy()
        y = s.run(x)
        assert y.shape == (n, 5) and y.dtype == np.float32
        assert np.abs(y - ref).max() < 1e-4 and np.abs(ref).max() > 0.02
    assert np.ptp(ref, axis=0).max() > 0.01  # the logits depend on the input
    x = _images(1, seed=7)
    np.testing.assert_array_equal(s.runner(x)(), s.run(x))


def test_a_fixed_batch_file_runs_other_batches(tmp_path):
    module, path = _export(tmp_path, _net(), batch=2)
    s = MNNSession(path, threads=2)
    assert s.fixed_batch == 2
    x = _images(3)
    with torch.no_grad():
        ref = module(torch.from_numpy(x)).numpy()
    assert np.abs(s.run(x) - ref).max() < 1e-4


@pytest.mark.parametrize("content", [b"", b"not a model", bytes(range(256)) * 64])
def test_a_broken_file_is_a_usage_error(tmp_path, content):
    bad = tmp_path / "bad.mnn"
    bad.write_bytes(content)
    with pytest.raises(UsageError, match="mnn cannot load .*bad.mnn"):
        MNNSession(bad)
    with pytest.raises(UsageError, match="no such file"):
        MNNSession(tmp_path / "missing.mnn")


def test_a_converter_failure_is_an_export_error(tmp_path):
    class Odd(nn.Module):  # ONNX Bernoulli: an op MNN's converter does not support
        def forward(self, x):
            return torch.bernoulli(torch.sigmoid(x)).flatten(1)

    with pytest.raises(ExportError, match="MNN conversion failed: .*Bernoulli"):
        to_mnn(Odd(), torch.zeros(1, 3, RES, RES), tmp_path / "odd.mnn")
    assert not list(tmp_path.iterdir())


def test_int8_file_is_smaller_and_agrees(tmp_path):
    net = _net()
    module, src = _export(tmp_path, net)
    dst = tmp_path / "model_int8.mnn"
    calib = _smooth_images(32)
    assert quantize_mnn(src, dst, calib) == dst
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.mnn", "model_int8.mnn"]
    assert dst.stat().st_size < 0.6 * src.stat().st_size
    s32, s8 = MNNSession(src), MNNSession(dst, precision="int8")
    x = _smooth_images(64, seed=1)
    y32, y8 = s32.run(x), s8.run(x)
    assert (y32.argmax(1) == y8.argmax(1)).mean() >= 0.75
    c32, c8 = y32 - y32.mean(0), y8 - y8.mean(0)  # how the logits vary with the input
    assert np.corrcoef(c32.ravel(), c8.ravel())[0, 1] > 0.9
    np.testing.assert_array_equal(s8.run(x[:4]), y8[:4])  # deterministic
    with pytest.raises(UsageError, match="calibration images of shape"):
        quantize_mnn(src, tmp_path / "x.mnn", calib[:, :, :16, :16])


def _smooth_images(n, seed=0):
    """Smooth random images (blurred noise, per-image colour shift), normalized like ImageNet inputs."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3, RES // 4, RES // 4)).astype(np.float32)
    x = np.repeat(np.repeat(x, 4, axis=2), 4, axis=3)
    return np.ascontiguousarray(x + rng.standard_normal((n, 3, 1, 1)).astype(np.float32) * 0.5)
