"""Accuracy-controlled int8 (`export --int8 --max-drop`): a tiny model with one deliberately fragile
layer, whose input carries one channel 1000x larger than the rest (the float function unchanged), so
that per-tensor int8 of that input wipes out the other channels. The search must find that layer,
keep it in float, and meet the bound; an impossible bound keeps no file."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from test_export import needs, trained_like
from typer.testing import CliRunner

from mobilenets.cli import app
from mobilenets.deploy import accuracy
from mobilenets.deploy.calibration import ImageSet
from mobilenets.deploy.export import export
from mobilenets.deploy.graph import deploy_module
from mobilenets.deploy.runtimes import open_session
from mobilenets.deploy.runtimes.litert import quantize_tflite
from mobilenets.weights.io import save_checkpoint

FRAGILE = "blocks.1.expand.conv"


def _smooth(rng, n: int) -> np.ndarray:
    low = torch.from_numpy(rng.standard_normal((n, 3, 8, 8), dtype=np.float32))
    return torch.nn.functional.interpolate(low, size=32, mode="bilinear").numpy()


@pytest.fixture(scope="module")
def fragile():
    """(model, calibration images, held-out ImageSet labelled by the fp32 model)."""
    torch.manual_seed(0)  # module-scoped: seeded here, not by the per-test seed
    net = trained_like("mobilenet_v2", width=0.5, res=32, cifar_stem=2)
    rng = np.random.default_rng(0)
    calib, held = _smooth(rng, 64), _smooth(rng, 400)
    with torch.no_grad():
        # BN statistics of these images, so that the signal reaches the logits as in a trained model
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
        stats = torch.from_numpy(_smooth(np.random.default_rng(1), 256))
        net.train()(stats)
        net.eval()
        net.classifier.bias -= net(stats).mean(0)  # centred logits: the answers spread over the classes
        # block 0's output channel 0 (no residual on either side) x 1000, undone in block 1's input weights
        bn = net.blocks[0].project.bn
        bn.weight[0] *= 1000
        bn.bias[0] *= 1000
        net.blocks[1].expand.conv.weight[:, 0] /= 1000
    with torch.no_grad():
        logits = net(torch.from_numpy(held))
    # the images the fp32 model answers with a clear margin: int8 noise alone does not flip them
    top2 = logits.topk(2, dim=1).values
    clear = ((top2[:, 0] - top2[:, 1]) > 1.5).numpy()
    held, labels = held[clear], logits.argmax(1).numpy()[clear]
    assert np.bincount(labels, minlength=10).max() < 0.5 * len(labels)  # answers spread over the classes
    return net, calib, ImageSet(held, labels, source="synthetic", part="held-out")


def test_sensitivity_ranks_the_fragile_layer_first(fragile):
    net, calib, _ = fragile
    sens = accuracy.sensitivity(deploy_module(net), calib)
    assert max(sens, key=sens.get) == FRAGILE


@needs["onnx"]
def test_search_keeps_the_fragile_layer_in_float(fragile, tmp_path, fmt="onnx", int8_format="qdq"):
    net, calib, val = fragile
    fp32 = export(net, fmt, tmp_path / f"fp32.{'onnx' if fmt == 'onnx' else 'tflite'}", verify=False).path
    dst = tmp_path / f"int8{fp32.suffix}"
    d = deploy_module(net)
    # a random network is fragile to int8 beyond the planted layer: the bound leaves room for that
    r = accuracy.quantize_with_control(fmt, fp32, dst, calib, val, 5.0, module=d,
                                       example=torch.zeros(1, 3, 32, 32), int8_format=int8_format)
    first, chosen = r["trials"][0], r["trials"][r["chosen"]]
    assert first["n_float"] == 0 and first["drop"] > 50  # every layer int8: the fragile input breaks it
    assert r["trials"][1]["float_layers"] == [FRAGILE] and r["trials"][1]["drop"] < first["drop"] - 20
    assert r["met"] and chosen["drop"] <= 5.0 and FRAGILE in chosen["float_layers"]
    assert chosen["n_float"] <= len(accuracy.conv_layers(d)) // 2  # the fewest that meet it, not all
    assert r["fp32_top1"] == 100.0 and dst.exists() and not list(tmp_path.glob(".*trials"))
    pred = open_session(dst).run(val.images).argmax(1)
    assert 100 * (pred == val.labels).mean() == pytest.approx(chosen["top1"])


@needs["tflite"]
def test_litert_keeps_an_excluded_layer_in_float(fragile, tmp_path):
    """The LiteRT build the search uses: the layer excluded from LiteRT's own quantizer runs with
    float weights (the search loop itself is the ONNX Runtime tests')."""
    net, calib, val = fragile
    d, example = deploy_module(net), torch.zeros(1, 3, 32, 32)

    def float_convs(path) -> int:
        interp = open_session(path).interp
        tensors = {t["index"]: t for t in interp.get_tensor_details()}
        return sum(1 for op in interp._get_ops_details() if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D")
                   and tensors[op["inputs"][1]]["dtype"] == np.float32)

    full = quantize_tflite(None, tmp_path / "full.tflite", calib, module=d, example=example)
    kept = quantize_tflite(None, tmp_path / "kept.tflite", calib, module=d, example=example, exclude=[FRAGILE])
    assert float_convs(full) == 0 and float_convs(kept) >= 1


@needs["openvino"]
def test_openvino_accuracy_control_through_nncf(fragile, tmp_path, monkeypatch):
    """Full int8 first; over the bound, NNCF's quantize_with_accuracy_control with an absolute drop in
    [0, 1] and our top-1 as its metric. NNCF's own search compiles the model once per quantizer group
    (minutes on 2 cores), so it is stood in for here by one that keeps the fp32 model; its result is
    then scored like any other configuration."""
    import nncf
    import openvino as ov
    net, calib, val = fragile
    fp32 = export(net, "openvino", tmp_path / "fp32.xml", verify=False).path
    seen = {}

    def restore(model, calibration, validation, validation_fn, **kw):
        compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        seen.update(kw, metric=validation_fn(compiled, validation.get_data()))
        return model

    monkeypatch.setattr(nncf, "quantize_with_accuracy_control", restore)
    r = accuracy.quantize_with_control("openvino", fp32, tmp_path / "int8.xml", calib, val, 5.0)
    assert seen["max_drop"] == 0.05 and seen["drop_type"] == nncf.DropType.ABSOLUTE
    assert seen["metric"] == 1.0  # top-1 of the fp32 model on its own answers
    assert r["method"].startswith("NNCF") and r["trials"][0]["drop"] > 5.0
    chosen = r["trials"][r["chosen"]]
    assert r["met"] and chosen["drop"] <= 5.0
    assert (tmp_path / "int8.xml").exists() and (tmp_path / "int8.bin").exists()


@needs["onnx"]
def test_an_impossible_bound_keeps_no_file(fragile, tmp_path, monkeypatch):
    net, calib, val = fragile
    fp32 = export(net, "onnx", tmp_path / "fp32.onnx", verify=False).path
    # a runtime that never scores above 50%: no configuration can be within 0 points of fp32's 100%
    real = accuracy._Scorer.top1
    monkeypatch.setattr(accuracy._Scorer, "top1", lambda self, p: 100.0 if p == fp32 else min(real(self, p), 50.0))
    monkeypatch.setattr(accuracy, "_counts", lambda n: [0, 1, 2, 4])  # the search's schedule, cut short
    with pytest.raises(accuracy.AccuracyNotMet, match="no int8 configuration") as err:
        accuracy.quantize_with_control("onnx", fp32, tmp_path / "int8.onnx", calib, val, 0.0,
                                       module=deploy_module(net), example=torch.zeros(1, 3, 32, 32))
    assert len(err.value.report["trials"]) == 4 and err.value.report["chosen"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fp32.json", "fp32.onnx"]


@needs["onnx"]
def test_cli_max_drop_and_both_int8_forms(fragile, tmp_path):
    import onnx
    net, calib, val = fragile
    from PIL import Image
    data = tmp_path / "data"
    ckpt = save_checkpoint(tmp_path / "m.safetensors", net)
    # the CLI reads image folders: calibration and held-out images as class folders of PNGs
    for name, images in (("calib", calib), ("val", val.images)):
        for i, im in enumerate(images):
            folder = data / name / f"c{0 if name == 'calib' else i % 2}"
            folder.mkdir(parents=True, exist_ok=True)
            arr = np.clip((im.transpose(1, 2, 0) * 0.25 + 0.5) * 255, 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(folder / f"{i}.png")
    # the planted layer breaks plain int8: the form checks below waive the agreement floor
    base = ["export", str(ckpt), "--int8", "--calib", str(data / "calib"), "--json", "--min-agreement", "0"]
    forms = {}
    for form in ("qdq", "qoperator"):
        res = CliRunner().invoke(app, [*base, "--int8-format", form, "-o", str(tmp_path / f"{form}.onnx")])
        assert res.exit_code == 0, res.output
        forms[form] = Counter(n.op_type for n in onnx.load(str(tmp_path / f"{form}.onnx")).graph.node)
        assert json.loads((tmp_path / f"{form}.json").read_text())["int8_format"] == form
    assert forms["qdq"]["QuantizeLinear"] and forms["qdq"]["DequantizeLinear"] and not forms["qdq"]["QLinearConv"]
    assert forms["qoperator"]["QLinearConv"]
    res = CliRunner().invoke(app, [*base, "--max-drop", "50", "--val", str(data / "val"), "-o",
                                   str(tmp_path / "ctl.onnx")])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    c = out["control"]
    assert c["met"] and c["val_images"] == len(val) and c["validation"]["source"] == str(data / "val")
    assert c["calibration"]["images"] == len(calib)
    assert CliRunner().invoke(app, [*base, "--max-drop", "-1", "--val", str(data / "val")]).exit_code == 2
    bad = CliRunner().invoke(app, ["export", str(ckpt), "--format", "openvino", "--int8", "--calib",
                                   str(data / "calib"), "--int8-format", "qoperator"])
    assert bad.exit_code == 2 and "qoperator" in bad.output


def test_the_search_grows_the_float_set_geometrically():
    assert accuracy._counts(53) == [0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 53]
    assert accuracy._counts(2) == [0, 1, 2]
