"""LiteRT (TFLite): ``.tflite`` files from litert-torch's converter (NHWC input by default, fixed
batch), int8 through PT2E with LiteRT's quantizer, run by LiteRT's interpreter with its XNNPACK
delegate.
"""
from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ...core.errors import UsageError
from ..common import NO_STEPS, ExportError, Steps, first_line, quiet
from .base import Runtime, Session, load_error


def to_tflite(module: nn.Module, example: torch.Tensor, path: Path, *, dynamic: bool = False, opset: int = 0,
              verbose: bool = False, steps: Steps = NO_STEPS, outputs: Sequence[str] = ("logits",)) -> None:
    """TFLite through LiteRT's PyTorch converter (litert-torch); the signature's outputs named
    ``outputs``, in order."""
    litert_torch = require_litert_torch()
    with steps("trace"), quiet():
        try:
            edge = litert_torch.convert(_Named(module, outputs), (example,))
        except Exception as exc:  # noqa: BLE001
            raise ExportError(f"litert-torch conversion failed: {first_line(exc)}") from exc
    with steps("write"), quiet():
        try:
            edge.export(str(path))
        except Exception as exc:  # noqa: BLE001
            raise ExportError(f"litert-torch could not write {path.name}: {first_line(exc)}") from exc


class _Named(nn.Module):
    """``module`` with its outputs returned as a dict by name: litert-torch names the signature's
    outputs by the keys (a tuple would give ``output_0``, ``output_1``...)."""

    def __init__(self, module: nn.Module, names: Sequence[str]):
        super().__init__()
        self.module, self.names = module, list(names)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.module(x)
        out = [out] if isinstance(out, torch.Tensor) else list(out)
        if len(out) != len(self.names):
            raise ExportError(f"the module gives {len(out)} outputs, {len(self.names)} names were given")
        return dict(zip(self.names, out, strict=True))


def require_litert_torch():
    """litert-torch, or a one-line ``UsageError`` saying what to install."""
    try:
        with quiet():  # it brings JAX and TensorFlow logging along
            import litert_torch
    except ImportError:
        raise UsageError("TFLite export needs LiteRT's PyTorch converter: pip install litert-torch ai-edge-litert") \
            from None
    return litert_torch


def quantize_tflite(src, dst: str | os.PathLike, calib: np.ndarray, *, module, example,
                    exclude: list[str] | tuple[str, ...] = (), **_) -> Path:
    """Full-integer-weights static quantization with PT2E and LiteRT's quantizer (float I/O),
    converted from the torch ``module`` (``src``, the fp32 file, is not read); the layers of
    ``module`` named in ``exclude`` stay in float."""
    with quiet():
        import litert_torch
        from litert_torch.quantize import pt2e_quantizer
        from litert_torch.quantize.quant_config import QuantConfig
        from torchao.quantization.pt2e import quantize_pt2e

    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
    with quiet():
        m = torch.export.export(module, (example,)).module()
        m = quantize_pt2e.prepare_pt2e(m, _excluding(quantizer, set(exclude)) if exclude else quantizer)
        b = example.shape[0]
        with torch.no_grad():
            for i in range(0, len(calib) - b + 1, b):
                m(torch.from_numpy(calib[i:i + b]))
        m = quantize_pt2e.convert_pt2e(m, fold_quantize=False)
        edge = litert_torch.convert(m, (example,), quant_config=QuantConfig(pt2e_quantizer=quantizer))
        edge.export(str(dst))
    return Path(dst)


def _excluding(quantizer, names: set[str]):
    """``quantizer`` with no annotation on the nodes of the modules ``names``: they run in float."""
    from torchao.quantization.pt2e.quantizer import Quantizer

    class Excluding(Quantizer):
        def transform_for_annotation(self, model):
            return quantizer.transform_for_annotation(model)

        def annotate(self, model):
            quantizer.annotate(model)
            blocks = {n.rsplit(".", 1)[0] for n in names}  # a conv's block: the conv and its activation
            # and the block that computes its input, whose output would stay quantized otherwise
            feeds = [node.args[0] for node in model.graph.nodes if _module_of(node) in names and node.args
                     and isinstance(node.args[0], torch.fx.Node)]
            blocks |= {_module_of(f).rsplit(".", 1)[0] for f in feeds if _module_of(f)}
            stripped = {node for node in model.graph.nodes
                        if _module_of(node) in names or _module_of(node).rsplit(".", 1)[0] in blocks} | set(feeds)
            while True:  # and every annotation that shares a quantizer with a stripped node
                shared = {node for node in model.graph.nodes if node not in stripped
                          and _shares_with(node.meta.get("quantization_annotation"), stripped)}
                if not shared:
                    break
                stripped |= shared
            for node in stripped:
                node.meta.pop("quantization_annotation", None)
            return model

        def validate(self, model):
            quantizer.validate(model)

    return Excluding()


def _module_of(node) -> str:
    """The innermost module a traced node belongs to ("" when none)."""
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


def _shares_with(annotation, nodes: set) -> bool:
    """Whether a PT2E annotation derives its quantizer from one of ``nodes`` (a shared spec)."""
    if annotation is None:
        return False
    for spec in (*annotation.input_qspec_map.values(), annotation.output_qspec):
        edge = getattr(spec, "edge_or_node", None)  # a node, or an (input node, user node) edge
        if edge is not None and any(n in nodes for n in (edge if isinstance(edge, tuple) else (edge,))):
            return True
    return False


class LiteRTSession(Session):
    backend = "litert"

    def __init__(self, path: Path, **kw):
        interp_mod = RUNTIME.require()
        super().__init__(path=Path(path), **kw)
        if self.precision not in ("fp32", "int8"):
            raise UsageError(f"litert runs fp32 or int8 files, not {self.precision}")
        try:
            with quiet():  # the delegate's "INFO: Created TensorFlow Lite XNNPACK delegate" line
                self.interp = interp_mod.Interpreter(model_path=str(path), num_threads=self.threads)
                self.interp.allocate_tensors()
        except Exception as exc:  # noqa: BLE001
            raise load_error("litert", path, exc) from None
        self.inp = self.interp.get_input_details()[0]
        details = {d["index"]: d for d in self.interp.get_output_details()}
        signature = self.interp._get_full_signature_list() or {}  # {key: {"outputs": {name: tensor index}}}
        named = next(iter(signature.values()), {}).get("outputs") or {}
        by_name = {name: details[i] for name, i in named.items() if i in details} if len(named) == len(details) \
            else {d["name"]: d for d in details.values()}
        # the signature lists litert-torch's outputs by name (ours), or as output_0, output_1... in order
        numbered = all(_index_of(n) is not None for n in by_name)
        order = sorted(by_name, key=_index_of) if numbered else list(by_name)
        self._outs = [by_name[n] for n in self._name_outputs(order, by_position=numbered)]
        self.out = self._outs[0]
        self._declare_input(list(self.inp["shape"]), fixed_batch=True)

    def _run_all(self, x: np.ndarray) -> list[np.ndarray]:
        self.interp.set_tensor(self.inp["index"], self._quant(x, self.inp))
        self.interp.invoke()
        return [self._dequant(self.interp.get_tensor(out["index"]), out) for out in self._outs]

    @staticmethod
    def _dequant(y: np.ndarray, detail: dict) -> np.ndarray:
        scale, zero = detail.get("quantization", (0.0, 0))
        if y.dtype != np.float32 and scale:
            y = (y.astype(np.float32) - zero) * scale
        return y

    @staticmethod
    def _quant(x: np.ndarray, detail: dict) -> np.ndarray:
        if detail["dtype"] == np.float32:
            return x
        scale, zero = detail.get("quantization", (0.0, 0))
        info = np.iinfo(detail["dtype"])
        return np.clip(np.round(x / scale + zero), info.min, info.max).astype(detail["dtype"])


def _index_of(name: str) -> int | None:
    """k of a numbered output name ("output_k"), else None."""
    match = re.fullmatch(r"output_(\d+)", name)
    return int(match.group(1)) if match else None


def peer_tflite(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    """How users of LiteRT convert a model themselves: ``litert_torch.convert`` straight from the module."""
    litert_torch = require_litert_torch()
    with quiet():
        litert_torch.convert(module, (example,)).export(str(path))


RUNTIME = Runtime(backend="litert", module="ai_edge_litert.interpreter", package="ai-edge-litert",
                  format="tflite", suffix=".tflite", precisions=("fp32", "int8"), export_precisions=("fp32", "int8"),
                  dynamic_batch=False, nhwc=True, convert=to_tflite, converter=(("litert_torch", "litert-torch"),),
                  quantize=quantize_tflite, quantizer=(("torchao.quantization.pt2e", "torchao"),), int8_from="module",
                  session=LiteRTSession, peer_convert=peer_tflite,
                  export_cost={"fp32": 3.0, "int8": 10.0})  # PT2E conversion: tens of seconds a model
