"""Accuracy-controlled int8 (``export --int8 --max-drop PTS``): the fewest layers kept in float so that
top-1 on held-out images falls by at most ``max_drop`` points against the fp32 file, in its runtime.

* OpenVINO: full post-training int8 first; if it loses more than the bound, NNCF's
  ``quantize_with_accuracy_control``, which reverts the quantizers that cost most, measured with
  our top-1 on the held-out images.
* ONNX Runtime and LiteRT: every convolution is ranked by its sensitivity, the logit error (MSE
  against fp32, on calibration images: the held-out ones are kept for the choice) when it alone is
  quantized as the recipes quantize it (int8 per-channel weights, 8-bit per-tensor input with its
  calibrated range), simulated in PyTorch on the exported graph's module. Then configurations
  with the 0, 1, 2, 3, 4, 6, 8, 12, 16, ... most sensitive layers in float are built with the
  runtime's own quantizer (``quantize.quantize_onnx``'s ``nodes_to_exclude``,
  ``runtimes.litert.quantize_tflite``'s ``exclude``), each scored in the runtime, until one is within
  the bound.

Every configuration tried is reported (layers in float, top-1, drop, size, latency at batch 1 on
one thread); when none meets the bound, ``AccuracyNotMet`` carries that report and no file is kept.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..core.errors import UsageError
from .calibration import ImageSet
from .common import NO_STEPS, Steps, VerificationError, quiet
from .quantize import file_size, to_layout
from .runtimes import by_format, interleaved_latency, open_session
from .runtimes.litert import quantize_tflite
from .runtimes.onnxruntime import quantize_onnx
from .runtimes.openvino import openvino_batches, quantize_openvino

FORMATS = ("onnx", "openvino", "tflite")  # the exports whose int8 layers the search can keep in float

RANKING_IMAGES = 64  # calibration images the sensitivity ranking runs on


class AccuracyNotMet(VerificationError):
    """No int8 configuration kept top-1 within the bound; ``report`` lists what was tried."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


def quantize_with_control(fmt: str, fp32_file: str | os.PathLike, dst: str | os.PathLike, calib: np.ndarray,
                          val: ImageSet, max_drop: float, *, nhwc: bool = False, module: nn.Module | None = None,
                          example: torch.Tensor | None = None, int8_format: str = "qdq",
                          steps: Steps = NO_STEPS) -> dict:
    """Quantize ``fp32_file`` into ``dst`` keeping the fewest layers in float for a top-1 drop on
    ``val`` (labelled, held out) of at most ``max_drop`` points; ``calib``: NCHW calibration images
    (training split). ``module``/``example``: the exported torch module and its input (ranking,
    TFLite). Returns the report; raises ``AccuracyNotMet`` (nothing at ``dst``) when no
    configuration meets the bound."""
    if isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)) or not max_drop >= 0:
        raise UsageError(f"max_drop is a top-1 drop in points, >= 0; got {max_drop!r}")
    if val is None or val.labels is None or not len(val):
        raise UsageError("accuracy control needs labelled held-out images (--val DATA)")
    if fmt not in FORMATS:
        raise UsageError(f"accuracy control searches {', '.join(FORMATS)} exports, not {fmt!r}")
    fp32_file, dst = Path(fp32_file), Path(dst)
    backend = by_format(fmt).backend
    x = to_layout(calib, nhwc)
    scorer = _Scorer(backend, val)
    fp32_top1 = scorer.top1(fp32_file)
    report = {"max_drop": float(max_drop), "val_images": len(val), "fp32_top1": fp32_top1, "trials": [],
              "chosen": None, "met": False}
    work = dst.parent / f".{dst.stem}-trials"
    work.mkdir(exist_ok=True)
    try:
        if fmt == "openvino":
            report["method"] = "NNCF quantize_with_accuracy_control"
            _openvino(fp32_file, work, x, to_layout(val.images, nhwc), val.labels, max_drop, scorer, report, steps)
        else:
            report["method"] = "sensitivity-ranked float fallback"
            if module is None or example is None:
                raise UsageError(f"accuracy control for {fmt} needs the torch module that was exported")
            build = _builder(fmt, fp32_file, module, example, x, int8_format)
            _search(module, example, x, build, work, scorer, report, steps, onnx=fmt == "onnx")
        if report["chosen"] is None:
            for t in report["trials"]:
                t.pop("file", None)
            best = max(report["trials"], key=lambda t: t["top1"])
            raise AccuracyNotMet(f"no int8 configuration kept top-1 within {max_drop:g} points of fp32 "
                                 f"({fp32_top1:.2f}%) on {len(val)} held-out images: the best of "
                                 f"{len(report['trials'])} tried lost {fp32_top1 - best['top1']:.2f} points "
                                 f"with {best['n_float']} layer(s) in float", report)
        chosen = Path(report["trials"][report["chosen"]].pop("file"))
        for t in report["trials"]:
            t.pop("file", None)
        _move(chosen, dst)
        report["met"] = True
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ------------------------------------------------------------------------------------------
# scoring


class _Scorer:
    """Top-1 on the held-out images, size and batch-1 latency of a file in ``backend``."""

    def __init__(self, backend: str, val: ImageSet):
        self.backend, self.val = backend, val

    def top1(self, path: Path) -> float:
        pred = open_session(path, self.backend, threads=torch.get_num_threads()).run(self.val.images).argmax(1)
        return 100.0 * float((pred == self.val.labels).mean())

    def trial(self, path: Path, float_layers: list[str]) -> dict:
        s = open_session(path, self.backend, threads=1, precision="int8")
        lat = interleaved_latency({"m": s}, self.val.images[:1], warmup=5, rounds=5, per_round=10)
        return {"float_layers": list(float_layers), "n_float": len(float_layers), "top1": self.top1(path),
                "size_bytes": file_size(path), "latency_ms": lat["m"]["median_ms"], "file": str(path)}


def _record(report: dict, trial: dict, max_drop: float, steps: Steps) -> bool:
    trial["drop"] = report["fp32_top1"] - trial["top1"]
    report["trials"].append(trial)
    steps.log(f"  {trial['n_float']:3d} layer(s) in float: top-1 {trial['top1']:.2f}% (drop {trial['drop']:+.2f})")
    if trial["drop"] <= max_drop + 1e-9:
        report["chosen"] = len(report["trials"]) - 1
        return True
    return False


# ------------------------------------------------------------------------------------------
# ONNX Runtime and LiteRT: rank, then grow the float set


def _search(module, example, x, build, work: Path, scorer: _Scorer, report: dict, steps: Steps, *,
            onnx: bool) -> None:
    with steps("rank layers by sensitivity"):
        sens = sensitivity(module, x[:RANKING_IMAGES])
    order = sorted(sens, key=sens.get, reverse=True)
    report["sensitivity"] = {k: sens[k] for k in order}
    for k in _counts(len(order)):
        with steps(f"int8 with {k} layer(s) in float"):
            path = build(order[:k], work / f"k{k}{'.onnx' if onnx else '.tflite'}")
            if _record(report, scorer.trial(path, order[:k]), report["max_drop"], steps):
                return


def _counts(n: int) -> list[int]:
    """0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, ... up to ``n``."""
    out, k = [0, 1, 2, 3], 4
    while k < n:
        out += [k, k + k // 2]
        k *= 2
    return sorted({c for c in out if c < n} | {n})


def _builder(fmt: str, fp32_file: Path, module, example, x: np.ndarray, int8_format: str):
    """``build(float_layers, path)`` with the runtime's own quantizer."""
    if fmt == "onnx":
        names = onnx_conv_names(fp32_file, module)
        feeds = onnx_producers(fp32_file)

        def build(layers, path):
            # a layer's input stays quantized while the node that makes it is: that node is excluded too
            nodes = {names[m] for m in layers}
            nodes |= {feeds[n] for n in list(nodes) if n in feeds}
            return quantize_onnx(fp32_file, path, x, int8_format=int8_format, nodes_to_exclude=sorted(nodes))
        return build

    def build_tflite(layers, path):
        return quantize_tflite(None, path, x, module=module, example=example, exclude=layers)
    return build_tflite


def conv_layers(module: nn.Module) -> dict[str, nn.Module]:
    """The convolutions and linear layers of ``module`` by name."""
    return {n: m for n, m in module.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def onnx_conv_names(onnx_file: Path, module: nn.Module) -> dict[str, str]:
    """Each torch layer's ONNX node name, matched by its weights (the exporter renames nodes)."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(onnx_file))
    inits = {i.name: i for i in proto.graph.initializer}
    nodes = [n for n in proto.graph.node if n.op_type in ("Conv", "Gemm", "MatMul") and n.input[1] in inits]
    weights = {n.name: numpy_helper.to_array(inits[n.input[1]]) for n in nodes}
    out: dict[str, str] = {}
    for name, layer in conv_layers(module).items():
        w = layer.weight.detach().numpy()
        for node, v in weights.items():
            if node not in out.values() and v.size == w.size and (
                    np.allclose(v.reshape(-1), w.reshape(-1)) or (v.ndim == 2 and np.allclose(v.T.reshape(-1),
                                                                                             w.reshape(-1)))):
                out[name] = node
                break
    if len(out) != len(conv_layers(module)):
        raise VerificationError(f"matched {len(out)} of {len(conv_layers(module))} layers to {onnx_file.name}'s nodes")
    return out


def onnx_producers(onnx_file: Path) -> dict[str, str]:
    """Each node's name -> the name of the node that computes its first input (where there is one)."""
    import onnx

    graph = onnx.load(str(onnx_file)).graph
    made_by = {out: n.name for n in graph.node for out in n.output}
    return {n.name: made_by[n.input[0]] for n in graph.node if n.input and n.input[0] in made_by}


@torch.no_grad()
def sensitivity(module: nn.Module, x: np.ndarray) -> dict[str, float]:
    """Per layer: the MSE of the logits against fp32 when that layer alone is int8 (per-channel
    symmetric weights, per-tensor unsigned 8-bit input on its calibrated min/max)."""
    module = module.eval()
    inp = torch.from_numpy(np.ascontiguousarray(x))
    layers = conv_layers(module)
    ranges: dict[str, list[float]] = {}

    def observe(name):
        def hook(_, args):
            a = args[0]
            lo, hi = ranges.setdefault(name, [0.0, 0.0])
            ranges[name] = [min(lo, float(a.min())), max(hi, float(a.max()))]
        return hook

    handles = [m.register_forward_pre_hook(observe(n)) for n, m in layers.items()]
    ref = module(inp)
    for h in handles:
        h.remove()
    out = {}
    for name, layer in layers.items():
        lo, hi = ranges.get(name, (0.0, 0.0))
        scale = max(hi - lo, 1e-8) / 255
        zero = int(round(-lo / scale))
        saved = layer.weight.data.clone()
        w = saved.reshape(saved.shape[0], -1)
        wscale = (w.abs().amax(1).clamp_min(1e-12) / 127).to(torch.float32)
        zeros = torch.zeros_like(wscale, dtype=torch.int32)
        layer.weight.data = torch.fake_quantize_per_channel_affine(saved, wscale, zeros, 0, -127, 127)
        h = layer.register_forward_pre_hook(
            lambda _, args, s=scale, z=zero: (torch.fake_quantize_per_tensor_affine(args[0], s, z, 0, 255),))
        try:
            out[name] = float(((module(inp) - ref) ** 2).mean())
        finally:
            h.remove()
            layer.weight.data = saved
    return out


# ------------------------------------------------------------------------------------------
# OpenVINO


def _openvino(fp32_file: Path, work: Path, x: np.ndarray, val_x: np.ndarray, val_y: np.ndarray, max_drop: float,
              scorer: _Scorer, report: dict, steps: Steps) -> None:
    with steps("int8, every layer"):
        full = quantize_openvino(fp32_file, work / "full.xml", x)
        if _record(report, scorer.trial(full, openvino_float_layers(full)), max_drop, steps):
            return
    with quiet():
        import nncf
        import openvino as ov
    model = ov.Core().read_model(str(fp32_file))
    items, held = openvino_batches(model, x), openvino_batches(model, val_x, val_y)

    def validate(compiled, data) -> float:
        hits = [np.asarray(compiled(xb)[0]).argmax(1) == yb for xb, yb in data]
        return float(np.concatenate(hits).mean())

    with steps("NNCF accuracy control"), quiet():
        q = nncf.quantize_with_accuracy_control(
            model, nncf.Dataset(items), nncf.Dataset(held, lambda item: item[0]), validation_fn=validate,
            max_drop=max_drop / 100, drop_type=nncf.DropType.ABSOLUTE, subset_size=len(items),
            preset=nncf.QuantizationPreset.PERFORMANCE)
        ov.save_model(q, str(work / "controlled.xml"), compress_to_fp16=False)
    path = work / "controlled.xml"
    _record(report, scorer.trial(path, openvino_float_layers(path)), max_drop, steps)


def openvino_float_layers(path: Path) -> list[str]:
    """The convolutions of an IR whose input is not fed by a FakeQuantize: those that run in float."""
    with quiet():
        import openvino as ov
    model = ov.Core().read_model(str(path))
    convs = [n for n in model.get_ordered_ops() if n.get_type_name() in ("Convolution", "GroupConvolution",
                                                                         "MatMul")]
    return [n.get_friendly_name() for n in convs
            if n.input_value(0).get_node().get_type_name() != "FakeQuantize"]


# ------------------------------------------------------------------------------------------
# files


def _move(src: Path, dst: Path) -> None:
    if src.suffix == ".xml":
        shutil.move(str(src.with_suffix(".bin")), str(dst.with_suffix(".bin")))
    shutil.move(str(src), str(dst))
