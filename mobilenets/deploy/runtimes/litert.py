"""LiteRT (TFLite): ``.tflite`` files from litert-torch's converter (NHWC input by default, fixed
batch), int8 through PT2E with LiteRT's quantizer, run by LiteRT's interpreter with its XNNPACK
delegate.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ...core.errors import UsageError
from ..common import NO_STEPS, ExportError, Steps, first_line, quiet
from .base import Runtime, Session, load_error


def to_tflite(module: nn.Module, example: torch.Tensor, path: Path, *, dynamic: bool = False, opset: int = 0,
              verbose: bool = False, steps: Steps = NO_STEPS) -> None:
    """TFLite through LiteRT's PyTorch converter (litert-torch)."""
    litert_torch = require_litert_torch()
    with steps("trace"), quiet():
        try:
            edge = litert_torch.convert(module, (example,))
        except Exception as exc:  # noqa: BLE001
            raise ExportError(f"litert-torch conversion failed: {first_line(exc)}") from exc
    with steps("write"), quiet():
        try:
            edge.export(str(path))
        except Exception as exc:  # noqa: BLE001
            raise ExportError(f"litert-torch could not write {path.name}: {first_line(exc)}") from exc


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
        self.out = self.interp.get_output_details()[0]
        self._declare_input(list(self.inp["shape"]), fixed_batch=True)

    def _run(self, x: np.ndarray) -> np.ndarray:
        x = self._quant(x, self.inp)
        self.interp.set_tensor(self.inp["index"], x)
        self.interp.invoke()
        y = self.interp.get_tensor(self.out["index"])
        scale, zero = self.out.get("quantization", (0.0, 0))
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
