"""`export --int8 --qat-epochs N`: a thin call of `train --qat` on labelled data, then the int8 file
of the learned ranges; files that run in ONNX Runtime, OpenVINO and LiteRT, at least as accurate as
post-training quantization."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from test_export import needs
from typer.testing import CliRunner

from mobilenets import create_model
from mobilenets.cli import app
from mobilenets.core.errors import UsageError
from mobilenets.core.preprocessing import cifar
from mobilenets.deploy.calibration import load_images
from mobilenets.deploy.export import export, qat_finetune
from mobilenets.deploy.runtimes import open_session
from mobilenets.models.meta import CheckpointMeta
from mobilenets.train.report import Reporter

CLASSES = ("blue", "green", "red")
PRE = cifar(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
quiet = Reporter(enabled=False)


def colour_images(n: int, seed: int, cast: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """uint8 N x 32 x 32 x 3 smooth random images with a per-class colour cast, and their labels."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(CLASSES)
    small = rng.integers(0, 200, (n, 6, 6, 3), dtype=np.uint8)
    for i, c in enumerate(labels):
        small[i, ..., 2 - c] = rng.integers(cast, 256)  # blue, green, red: channel 2, 1, 0
    return np.stack([np.asarray(Image.fromarray(s).resize((32, 32), Image.BILINEAR)) for s in small]), labels


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("colours"))


def write_folder(root):
    """folder:ROOT with ROOT/train/<class>/*.png, as `train --data folder:` reads it."""
    images, labels = colour_images(180, seed=0)
    for i, (im, c) in enumerate(zip(images, labels, strict=True)):
        d = root / "train" / CLASSES[c]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(d / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def held_out():
    """Unseen images with a weaker cast than in training: fp32 gets most but not all right, so int8 errors show."""
    images, labels = colour_images(300, seed=1, cast=130)
    x = (images.astype(np.float32) / 255 - 0.5) / 0.25
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), labels


@pytest.fixture(scope="module")
def model(data_dir):
    return train_tiny(data_dir)


def train_tiny(data_dir):
    """A tiny MobileNetV3-Small trained a few steps on the colours (seeded), BN statistics re-estimated."""
    torch.manual_seed(0)
    net = create_model("mobilenet_v3_small", width=0.35, num_classes=3, resolution=32)
    train = load_images(f"folder:{data_dir}", PRE, limit=None)
    x, y = torch.from_numpy(train.images), torch.from_numpy(train.labels)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    net.train()
    for _ in range(25):
        idx = torch.randint(0, len(y), (32,), generator=g)
        loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    for m in net.modules():  # exact BN statistics of the training set (a few steps leave them noisy)
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        net(x)
    net.checkpoint_meta = CheckpointMeta("mobilenet_v3_small", net.config, PRE, list(CLASSES), {})
    return net.eval()


def accuracy(path, x, y) -> float:
    return float((open_session(path).run(x).argmax(1) == y).mean())


@needs["onnx"]
def test_qat_onnx_at_least_as_accurate_as_ptq(model, data_dir, held_out, tmp_path):
    import onnx
    x, y = held_out
    with torch.no_grad():
        fp32 = float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())
    assert 0.85 <= fp32 < 1  # learnt, with room for int8 to lose: the comparison below means something
    spec = f"folder:{data_dir}"
    ptq = export(model, "onnx", tmp_path / "ptq", int8=True, calib=spec, batch="dynamic")
    torch.manual_seed(0)
    qat = export(model, "onnx", tmp_path / "qat", int8=True, calib=spec, batch="dynamic", qat_epochs=1)
    a_ptq, a_qat = accuracy(ptq.path, x, y), accuracy(qat.path, x, y)
    assert a_qat >= a_ptq - 0.01 and a_qat >= fp32 - 0.02, (fp32, a_ptq, a_qat)
    # the file: int8 weights with per-channel scales, uint8 activations (ORT's U8S8 QDQ recipe)
    proto = onnx.load(str(qat.path))
    ops = Counter(n.op_type for n in proto.graph.node)
    assert ops["QuantizeLinear"] and ops["DequantizeLinear"] and ops["Conv"]
    inits = {i.name: i for i in proto.graph.initializer}
    wdq = [n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
           and len(inits[n.input[0]].dims) == 4]
    assert wdq and all(inits[n.input[0]].data_type == onnx.TensorProto.INT8 and len(inits[n.input[1]].dims) == 1
                       for n in wdq)
    assert qat.precision == "int8" and qat.verification["top1_agreement"] >= 0.5
    info = qat.qat
    assert info["epochs"] == 1 and len(info["history"]) == 1 and info["data"]["images"] == 162  # 10% held out
    assert info["data"]["held_out"] == 18 and "network" not in info
    side = json.loads(qat.sidecar.read_text())
    assert side["qat"]["route"].startswith("train --qat") and side["precision"] == "int8"
    assert sorted(p.name for p in (tmp_path / "qat").iterdir()) == sorted([qat.path.name, qat.sidecar.name])


@needs["openvino"]
def test_qat_openvino_ir(model, data_dir, held_out, tmp_path):
    x, y = held_out
    r = qat_finetune(model, f"folder:{data_dir}", "openvino", tmp_path, epochs=1, max_images=96, batch_size=32)
    assert r.path.suffix == ".xml" and r.path.with_suffix(".bin").is_file()
    assert "FakeQuantize" in r.path.read_text()
    assert accuracy(r.path, x, y) >= 0.85 and r.qat["data"]["images"] == 96


@needs["onnx"]
def test_qat_trains_on_qat_data_and_verifies_on_calib(model, data_dir, held_out, tmp_path):
    """``qat_data`` is what `train --qat` trains on (normalised as the model was); ``calib`` (here
    unlabelled images) only checks the file against the fake-quantized network."""
    x, _ = held_out
    r = export(model, "onnx", tmp_path, int8=True, calib=x[:32], qat_epochs=1, qat_data=f"folder:{data_dir}",
               qat_max_images=48, qat_batch_size=16, batch="dynamic")
    assert r.qat["data"]["images"] == 48 and r.qat["data"]["data"] == f"folder:{data_dir}"
    assert r.verification["images"] == 32 and r.verification["top1_agreement"] >= 0.9
    assert r.qat["history"][0]["val_top1"] > 50  # the model's own normalisation: still far above chance (33%)


@needs["tflite"]
def test_qat_tflite_learns_litert_recipe(model, data_dir, held_out, tmp_path):
    x, y = held_out
    r = export(model, "tflite", tmp_path, int8=True, calib=f"folder:{data_dir}", qat_epochs=1, qat_max_images=64,
               qat_batch_size=32)
    assert r.qat["backend"] == "litert" and r.path.suffix == ".tflite"
    assert accuracy(r.path, x, y) >= 0.8


def test_bad_input_is_a_one_line_usage_error(model, data_dir, tmp_path):
    spec = f"folder:{data_dir}"
    cases = [
        (dict(int8=True, calib=spec, qat_epochs=-1), "qat_epochs"),
        (dict(int8=True, calib=spec, qat_epochs=1.5), "qat_epochs"),
        (dict(calib=spec, qat_epochs=1), "int8"),
        (dict(int8=True, calib=np.zeros((4, 3, 32, 32), np.float32), qat_epochs=1), "labelled"),
        (dict(int8=True, calib=spec, qat_epochs=1, qat_lr=0.0), "learning rate"),
        (dict(int8=True, calib=spec, qat_epochs=1, nhwc=True), "NCHW"),
    ]
    for kw, match in cases:
        with pytest.raises(UsageError, match=match) as err:
            export(model, "onnx", tmp_path, **kw)
        assert "\n" not in str(err.value)
    flat = tmp_path / "flat"  # plain images: fine for PTQ calibration, no labels for QAT
    flat.mkdir()
    for i, f in enumerate(sorted(data_dir.rglob("*.png"))[:4]):
        (flat / f"{i}.png").write_bytes(f.read_bytes())
    with pytest.raises(UsageError, match="labelled"):
        export(model, "onnx", tmp_path, int8=True, calib=flat, qat_epochs=1)
    with pytest.raises(UsageError, match="onnx, openvino, tflite, not executorch"):
        export(model, "executorch", tmp_path, int8=True, calib=spec, qat_epochs=1)
    assert [p.name for p in tmp_path.iterdir()] == ["flat"]  # nothing written


def test_cli_qat_options(model, data_dir, tmp_path):
    from mobilenets.weights.io import save_checkpoint
    ckpt = save_checkpoint(tmp_path / "m.safetensors", model)
    res = CliRunner().invoke(app, ["export", str(ckpt), "--int8", "--calib", f"folder:{data_dir}",
                                   "--qat-epochs", "-2"])
    assert res.exit_code == 2 and "qat_epochs" in res.output
    res = CliRunner().invoke(app, ["export", str(ckpt), "--qat-epochs", "1", "--calib", f"folder:{data_dir}"])
    assert res.exit_code == 2 and "--int8" in res.output
    assert "--qat-epochs" in CliRunner().invoke(app, ["export", "--help"]).output
