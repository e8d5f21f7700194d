"""`train --qat`: quantization-aware training from scratch or from a float checkpoint, per runtime
recipe; its checkpoint carries the learned quantization, which `export --int8` uses without
calibrating; resume continues a QAT run."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_export import needs
from typer.testing import CliRunner

from mobilenets.cli import app
from mobilenets.core.errors import UsageError
from mobilenets.deploy import qat as deploy_qat
from mobilenets.deploy.export import export
from mobilenets.deploy.runtimes import open_session
from mobilenets.train import fit
from mobilenets.train.config import resolve_config
from mobilenets.train.qat import PLACEMENT as QAT_PLACEMENT
from mobilenets.train.qat import QATNet
from mobilenets.weights.io import read_weights
from mobilenets.weights.resolve import resolve_model

SMALL = dict(model="mobilenet_v3_small", width=0.25, cifar_stem=3, data="synthetic:64", batch_size=32, epochs=1,
             ema_decay=0.0, warmup_epochs=0, threads=1)


def _run(tmp_path, name, **kw):
    return fit(resolve_config(**{**SMALL, "output": str(tmp_path / name), **kw}))


@pytest.fixture(scope="module")
def ort_run(tmp_path_factory):
    """One epoch of QAT from scratch with ONNX Runtime's recipe, with an EMA of the weights (whose
    copy of the per-channel observers is sized before they see their first batch)."""
    return _run(tmp_path_factory.mktemp("qat"), "ort", qat=True, ema_decay=0.9)


def _inputs(n=16, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32), dtype=np.float32)


def assert_computes_the_fake_quantized_network(path, run_dir, x, steps=2):
    """The int8 file's logits are within ``steps`` steps of the output quantizer of the
    fake-quantized network's. (These seconds-long runs give nearly constant logits, as any
    untrained MobileNetV3 does, so top-1 agreement would compare ties; test_qat checks accuracy on
    a trained model.)"""
    fake = deploy_qat.learned_model(resolve_model(run_dir).model)
    with torch.no_grad():
        ref = fake(torch.from_numpy(x)).numpy()
    quantizers = [n.target for n in fake.graph.graph.nodes
                  if n.op == "call_module" and str(n.target).startswith("activation_post_process")]
    step = float(fake.graph.get_submodule(quantizers[-1]).scale.max())  # the logits' quantizer
    diff = float(np.abs(open_session(path).run(x) - ref).max())
    assert diff <= steps * step + 1e-6, (diff, step)


def test_qat_checkpoint_carries_the_learned_quantization(ort_run):
    tensors, meta = read_weights(ort_run.run_dir / "best.safetensors")
    extra = json.loads(meta["extra"])
    assert extra["qat"]["backend"] == "onnxruntime" and extra["qat"]["resolution"] == 32
    assert extra["qat"]["placement"] == QAT_PLACEMENT
    scales = [k for k in tensors if k.startswith("qat.") and k.endswith(".scale")]
    assert scales and all(float(tensors[k].min()) > 0 for k in scales)  # ranges were learned
    net = resolve_model(ort_run.run_dir / "best.safetensors").model  # still loads as a float model
    assert net.qat_state and all(not k.startswith("qat.") for k in net.state_dict())
    older = {k: v for k, v in extra["qat"].items() if k != "placement"}  # before linear layers were quantized
    with pytest.raises(UsageError, match="train --qat again"):  # not observers loaded into the wrong places
        QATNet.from_checkpoint(net, net.qat_state, older)


def test_eval_of_a_qat_checkpoint_scores_it_fake_quantized(ort_run):
    """`eval` of a QAT checkpoint gives the held-out top-1 its training validated (fake int8), not
    its float weights' (which QAT did not train to work alone)."""
    from mobilenets.evaluate import evaluate
    ev = evaluate(ort_run.run_dir / "last.safetensors", SMALL["data"], device="cpu")
    assert ev["top1"] == pytest.approx(ort_run.history[-1]["val_top1"]) and "fake int8" in ev["quantization"]


@needs["onnx"]
@pytest.mark.parametrize("fmt", [pytest.param("onnx", marks=needs["onnx"]),
                                 pytest.param("openvino", marks=needs["openvino"])])
def test_export_int8_of_a_qat_checkpoint_needs_no_calibration(ort_run, tmp_path, fmt, monkeypatch):
    calls = []
    monkeypatch.setattr(deploy_qat, "finetune", lambda *a, **k: calls.append("finetune"))
    r = export(ort_run.run_dir, fmt, tmp_path, int8=True, min_agreement=0.0)  # no calib: the learned ranges
    assert r.precision == "int8" and r.qat["learned"]["backend"] == "onnxruntime" and not calls
    # OpenVINO requantizes inside its fused int8 kernels: 5 steps measured, ONNX Runtime within 1
    assert_computes_the_fake_quantized_network(r.path, ort_run.run_dir, _inputs(), steps=2 if fmt == "onnx" else 8)
    if fmt == "onnx":
        import onnx
        graph = onnx.load(str(r.path)).graph
        assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in graph.node}
        # every convolution and linear layer (the pre-logits and classifier too) reads int8 weights
        made_by = {o: n.op_type for n in graph.node for o in n.output}
        weighted = [n for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
        assert len(weighted) == 2 + sum(n.op_type == "Conv" for n in graph.node)  # the two linear layers are there
        assert all(made_by.get(n.input[1]) == "DequantizeLinear" for n in weighted), \
            [n.name for n in weighted if made_by.get(n.input[1]) != "DequantizeLinear"]


@needs["onnx"]
def test_cli_export_of_a_qat_checkpoint_says_it_used_the_learned_ranges(ort_run, tmp_path):
    res = CliRunner().invoke(app, ["export", str(ort_run.run_dir), "--format", "onnx", "--int8", "--min-agreement",
                                   "0", "-o", str(tmp_path / "m.onnx")])
    assert res.exit_code == 0, res.output
    assert "learned ranges (onnxruntime recipe)" in res.output and (tmp_path / "m.onnx").is_file()


@needs["tflite"]
def test_litert_recipe_trains_and_exports_tflite(tmp_path):
    run = _run(tmp_path, "litert", qat=True, qat_backend="litert")
    r = export(run.run_dir, "tflite", tmp_path, int8=True)
    assert open_session(r.path).run(_inputs(2)).shape == (2, 10)
    with pytest.raises(UsageError, match="--qat-backend onnxruntime"):
        export(run.run_dir, "onnx", tmp_path, int8=True)


def test_qat_with_an_ema_of_the_weights_keeps_finite_ranges(tmp_path):
    """Past timm's EMA warm-up (step 9 on) averaging ranges that start at +-inf gave NaN, and the
    average's observers moved during validation: QAT with an EMA scored chance on held-out data."""
    run = _run(tmp_path, "ema", qat=True, ema_decay=0.99, batch_size=4)  # 16 steps
    assert run.history[-1]["val_loss"] is not None and np.isfinite(run.history[-1]["val_top1"])
    tensors, _ = read_weights(run.run_dir / "best.safetensors")
    ranges = {k: v for k, v in tensors.items() if k.startswith("qat.") and v.is_floating_point()}
    assert ranges and all(bool(torch.isfinite(v).all()) for v in ranges.values())


def test_qat_delay_trains_in_float_then_quantized(tmp_path):
    """``qat_delay``: the prepared graph runs in float for the first epochs (TF-slim's
    --quantize_delay), its observers watching, then simulates int8."""
    from conftest import spread_bn_and_head
    from torchao.quantization.pt2e import disable_observer, enable_observer

    from mobilenets import create_model
    for bad in (dict(qat_delay=1), dict(qat=True, qat_delay=1)):  # no --qat; not fewer than --epochs
        with pytest.raises(UsageError, match="qat-delay"):
            resolve_config(**{**SMALL, **bad})
    torch.manual_seed(0)
    net = spread_bn_and_head(create_model("mobilenet_v3_small", width=0.5, num_classes=10, resolution=32),
                             mean=0.5, head_std=0.1).eval()
    x = torch.from_numpy(_inputs(4))
    q = QATNet(net).eval()  # eval: a train-mode batch would move the BN statistics
    with torch.no_grad():
        q.graph.apply(enable_observer)  # calibrate the ranges on the batch
        q(x)
        q.graph.apply(disable_observer)
        ref = net(x)
        q.fake_quantize(False)
        float_err = float((q(x) - ref).abs().max())
        q.fake_quantize(True)
        int8_err = float((q(x) - ref).abs().max())
    # in float, the prepared graph is the network (measured 3e-3 of logits up to 1.8: the QAT graph's
    # BN folding), well under the error fake int8 adds
    assert float_err <= 5e-3 * float(ref.abs().max()) and float_err < int8_err / 5, (float_err, int8_err)
    run = _run(tmp_path, "delay", qat=True, epochs=2, qat_delay=1)
    tensors, _ = read_weights(run.run_dir / "last.safetensors")
    flags = [v for k, v in tensors.items() if k.endswith("fake_quant_enabled")]
    assert flags and all(int(v) == 1 for v in flags)  # quantized for the last epoch


def test_qat_from_a_float_checkpoint_and_resume(tmp_path):
    base = _run(tmp_path, "float")
    ft = _run(tmp_path, "ft", qat=True, weights=str(base.run_dir / "best.safetensors"), epochs=2, lr=0.01)
    assert len(ft.history) == 2
    part = _run(tmp_path, "part", qat=True, epochs=2)  # interrupted after one epoch, then resumed
    state = torch.load(part.run_dir / "state.pt", weights_only=True)
    assert any(k.startswith("graph.activation_post_process") for k in state["model"])
    resumed = fit(resume=part.run_dir)
    assert resumed.history[-1]["epoch"] == 2


def test_cli_qat_options(tmp_path):
    bad = CliRunner().invoke(app, ["train", "mobilenet_v3_small", "--qat", "--compile", "--data", "synthetic:8", "-o",
                                   str(tmp_path / "x")])
    assert bad.exit_code == 2 and "torch.compile" in bad.output
    bad = CliRunner().invoke(app, ["train", "mobilenet_v3_small", "--qat", "--qat-backend", "tensorrt", "--data",
                                   "synthetic:8", "-o", str(tmp_path / "y")])
    assert bad.exit_code == 2 and "qat-backend" in bad.output
    bad = CliRunner().invoke(app, ["train", "mobilenet_v3_small", "--qat", "--channels-last", "--data",
                                   "synthetic:8", "-o", str(tmp_path / "z")])
    assert bad.exit_code == 2 and "NCHW" in bad.output
    assert "--qat-backend" in CliRunner().invoke(app, ["train", "--help"]).output


@needs["onnx"]
def test_qat_under_ddp_two_processes_on_cpu(tmp_path):
    """`train --qat` in two DDP processes: the ranks report the same metrics, rank 0's checkpoint
    carries the learned ranges, and its int8 export computes what the fake-quantized network does."""
    from test_train import run_ddp
    cfg = resolve_config(**{**SMALL, "output": str(tmp_path / "ddp"), "qat": True, "epochs": 2, "device": "cpu"})
    results = run_ddp(cfg, timeout=300)
    assert results[0][1:] == results[1][1:]  # all-reduced: one set of metrics
    run = tmp_path / "ddp"
    assert len(json.loads((run / "metrics.json").read_text())) == 2
    assert json.loads((run / "config.json").read_text())["resolved"]["world_size"] == 2
    tensors, meta = read_weights(run / "best.safetensors")
    assert json.loads(meta["extra"])["qat"]["backend"] == "onnxruntime"
    assert any(k.startswith("qat.") and k.endswith(".scale") for k in tensors)
    r = export(run, "onnx", tmp_path, int8=True, min_agreement=0.0)
    assert_computes_the_fake_quantized_network(r.path, run, _inputs())
