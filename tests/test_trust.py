"""Deployed models you can trust: every export scored by `eval` on the checkpoint's held-out images,
calibration and validation disjoint, each runtime checked against PyTorch independently of the
exporter's own verification, int8 accuracy bounded, and no file left behind by a failed export."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_export import export_mod, needs, trained_like
from typer.testing import CliRunner

from mobilenets import create_model
from mobilenets.cli import app
from mobilenets.core.errors import UsageError
from mobilenets.data.datasets import load_data
from mobilenets.deploy import runtimes
from mobilenets.deploy.calibration import check_disjoint, load_held_out, load_images, split_of
from mobilenets.deploy.common import ExportError
from mobilenets.deploy.export import VerificationError, export
from mobilenets.deploy.runtimes import open_session
from mobilenets.evaluate import evaluate
from mobilenets.weights.io import save_checkpoint

CLASSES = ("ant", "bee", "cow")
RUNNABLE = ("onnx", "openvino", "tflite", "executorch", "ncnn", "mnn")  # Core ML cannot run on Linux
FORMATS = [pytest.param(f, marks=needs[f]) for f in RUNNABLE]
INT8 = [pytest.param(f, marks=needs[f]) for f in RUNNABLE if f != "ncnn"]  # ncnn's pip packages: no int8 tool
ALL = [*FORMATS, pytest.param("coreml", marks=needs["coreml"])]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """folder:ROOT with train/<class>/ of 32 px images (CIFAR-sized), 10 per class."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (root / "train" / name).mkdir(parents=True)
        for i in range(10):
            small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
            small[..., c] = 255
            Image.fromarray(small).resize((32, 32), Image.BILINEAR).save(root / "train" / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def checkpoint(data_root, tmp_path_factory):
    """A checkpoint that records the split its training run held out (9 images, seed 3)."""
    spec = f"folder:{data_root}"
    splits = load_data(spec, val_size=9, seed=3)
    torch.manual_seed(0)
    model = create_model("mobilenet_v3_small", width=0.35, num_classes=3, resolution=32, cifar_stem=3).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 1.5)
    extra = {"data": spec, "val_size": 9, "split_seed": 3}
    path = tmp_path_factory.mktemp("ckpt") / "best.safetensors"
    return save_checkpoint(path, model, preprocessing=splits.preprocessing, class_names=list(CLASSES),
                           variant="mobilenet_v3_small", extra=extra)


@pytest.mark.parametrize("fmt", FORMATS)
def test_eval_of_each_export_scores_the_checkpoints_held_out_images(checkpoint, data_root, tmp_path, fmt):
    spec = f"folder:{data_root}"
    own = evaluate(checkpoint, spec)
    r = export(checkpoint, fmt, tmp_path, nhwc=fmt == "tflite")
    side = json.loads(r.sidecar.read_text())
    assert (side["data"], side["val_size"], side["split_seed"]) == (spec, 9, 3)  # the split travels
    res = CliRunner().invoke(app, ["eval", str(r.path), "--data", spec, "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.output)
    assert got["images"] == own["images"] == 9 and got["split"] == own["split"]
    assert abs(got["top1"] - own["top1"]) <= 1e-6 and abs(got["loss"] - own["loss"]) < 1e-3


def test_calibration_and_validation_are_disjoint(checkpoint, data_root):
    spec = f"folder:{data_root}"
    from mobilenets.weights.resolve import resolve_model
    resolved = resolve_model(checkpoint)
    split = split_of(spec, resolved.meta)
    assert split == {"val_size": 9, "seed": 3}  # the checkpoint's own split, not train's default
    pre = resolved.meta.preprocessing
    calib = load_images(spec, pre, limit=None, split=split)
    val = load_held_out(spec, pre, split=split)
    assert len(calib) == 21 and len(val) == 9 and not set(calib.files) & set(val.files)
    assert calib.part == "training split" and val.part.startswith("held-out")
    check_disjoint(calib, val)
    with pytest.raises(UsageError, match="share 9"):
        check_disjoint(load_images(data_root / "train", pre, limit=None), val)
    # another data set than the checkpoint's: train's default split (10% held out, seed 0)
    assert split_of("folder:/elsewhere", resolved.meta) == {"val_size": 0.1, "seed": 0}


@needs["onnx"]
def test_int8_report_is_measured_on_held_out_images(checkpoint, data_root, tmp_path):
    spec = f"folder:{data_root}"
    r = export(checkpoint, "onnx", tmp_path, int8=True, calib=spec, report=True)
    rep = r.report
    assert rep["calibration"] == {"source": spec, "part": "training split", "images": 21, "labelled": True}
    assert rep["validation"]["images"] == rep["images"] == 9 and rep["validation"]["part"].startswith("held-out")


@pytest.mark.parametrize("fmt", [p for p in FORMATS if p.values[0] != "onnx"])
def test_fp32_runtime_outputs_match_pytorch(fmt, tmp_path):
    """Each runtime's logits against PyTorch's, computed here rather than by the exporter's check."""
    model = trained_like(res=64).eval()
    r = export(model, fmt, tmp_path, verify=False, nhwc=fmt == "tflite")
    x = np.random.default_rng(5).standard_normal((3, 3, 64, 64), dtype=np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    got = np.concatenate([open_session(r.path).run(x[i:i + 1]) for i in range(len(x))])
    assert got.shape == ref.shape and np.abs(got - ref).max() < 1e-4


@pytest.mark.parametrize("fmt", INT8)
def test_ptq_int8_accuracy_is_bounded_on_held_out_images(fmt, tmp_path):
    """int8 against fp32 on held-out images (labels: the fp32 model's own answers, so fp32 scores 100%):
    post-training int8 keeps at least 85% of them. A broken recipe (no per-channel weights, wrong
    ranges) falls far below."""
    model = trained_like(res=64).eval()
    rng = np.random.default_rng(11)
    smooth = lambda n: torch.nn.functional.interpolate(  # noqa: E731 - smooth random images, like photos
        torch.from_numpy(rng.standard_normal((n, 3, 8, 8), dtype=np.float32)), size=64, mode="bilinear").numpy()
    calib, held_out = smooth(64), smooth(48)
    r = export(model, fmt, tmp_path, int8=True, calib=calib, nhwc=fmt == "tflite")
    with torch.no_grad():
        labels = model(torch.from_numpy(held_out)).argmax(1).numpy()
    s = open_session(r.path)
    pred = np.concatenate([s.run(held_out[i:i + 1]) for i in range(len(held_out))]).argmax(1)
    assert (pred == labels).mean() >= 0.85


@pytest.mark.parametrize("fmt", ALL)
@pytest.mark.parametrize("where", ["convert", "verify"])
def test_a_failed_export_leaves_no_file(fmt, where, tmp_path, monkeypatch):
    model = trained_like(res=64)
    if where == "convert":
        def broken(module, example, path, **kw):
            path.write_bytes(b"half a file")
            raise ExportError("converter crashed")
        runtime = runtimes.by_format(fmt)
        monkeypatch.setitem(runtimes.RUNTIMES, runtime.backend, dataclasses.replace(runtime, convert=broken))
        expected = ExportError
    else:
        def disagree(*a, **kw):
            raise VerificationError("logits differ")
        monkeypatch.setattr(export_mod, "verify_export", disagree)
        runtime = runtimes.by_format(fmt)
        if runtime.inspect is not None:  # a runtime checked, not run, here (Core ML on Linux)
            monkeypatch.setitem(runtimes.RUNTIMES, runtime.backend, dataclasses.replace(runtime, inspect=disagree))
        expected = VerificationError
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(expected):
        export(model, fmt, out, nhwc=fmt == "tflite")
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_predict_of_each_export_gives_the_checkpoints_top1(checkpoint, data_root, tmp_path, fmt):
    """`predict FILE` on the images, against `predict CHECKPOINT`: same top-1 class for every image."""
    r = export(checkpoint, fmt, tmp_path, nhwc=fmt == "tflite")
    images = str(data_root / "train")
    runner = CliRunner()
    own = runner.invoke(app, ["predict", str(checkpoint), images, "--json", "--top", "1", "--device", "cpu"])
    got = runner.invoke(app, ["predict", str(r.path), images, "--json", "--top", "1"])
    assert own.exit_code == 0 and got.exit_code == 0, own.output + got.output
    top1 = lambda res: [p["top"][0]["label"] for p in json.loads(res.stdout)["predictions"]]  # noqa: E731
    assert len(top1(own)) == 30 and top1(got) == top1(own)
