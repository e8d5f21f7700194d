"""ExecuTorch: PyTorch's on-device runtime. ``torch.export``, lowered whole to the XNNPACK delegate,
written as a ``.pte`` program and run in ExecuTorch's Python runtime (its XNNPACK kernels, the
ones LiteRT also runs).

Every operator of the network must be delegated: an export that leaves an operator to ExecuTorch's
portable kernels, or splits the graph into several delegate calls, fails with the list of what
was left out (the cause of "MobileNetV3 on ExecuTorch is slower than PyTorch Mobile" reports).
int8: PT2E with the XNNPACK quantizer (per-channel symmetric weights, static activations).
"""
from __future__ import annotations

import collections
import copy
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ...core.errors import UsageError
from ..common import NO_STEPS, ExportError, Steps, first_line, quiet
from ..graph import fold_hardsigmoid
from .base import Runtime, Session, load_error

# Nodes of a lowered graph besides the delegate calls that are not computation: unpacking their outputs.
_PLUMBING = ("getitem",)


def _lower(program):
    """``program`` (a torch.export ExportedProgram) lowered to the XNNPACK delegate."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    return to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])


def delegation(edge) -> dict:
    """How much of a lowered program XNNPACK runs: the number of delegate calls and the operators left
    outside them (name -> count)."""
    graph = edge.exported_program().graph_module.graph
    calls, left = 0, collections.Counter()
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        name = getattr(node.target, "__name__", str(node.target))
        if "executorch_call_delegate" in name:
            calls += 1
        elif not any(p in name for p in _PLUMBING):
            left[_op_name(node.target)] += 1
    return {"delegate_calls": calls, "not_delegated": dict(left)}


def _op_name(target) -> str:
    name = str(getattr(target, "_name", None) or getattr(target, "__name__", target))
    return name.split("::")[-1]


def write_program(program, path: Path, *, steps: Steps = NO_STEPS, strict: bool = True) -> dict:
    """Lower ``program`` to XNNPACK and write the ``.pte``; with ``strict``, an operator left outside the
    delegate or a split graph is an ``ExportError`` naming them. Returns ``delegation``'s record."""
    with steps("lower to XNNPACK"), quiet():
        try:
            edge = _lower(program)
        except Exception as exc:  # noqa: BLE001
            raise ExportError(f"ExecuTorch lowering failed: {first_line(exc)}") from exc
    record = delegation(edge)
    if strict and (record["not_delegated"] or record["delegate_calls"] != 1):
        left = ", ".join(f"{op} x{n}" for op, n in sorted(record["not_delegated"].items())) or "none"
        raise ExportError(f"ExecuTorch: the XNNPACK delegate does not run the whole network "
                          f"({record['delegate_calls']} delegated parts; operators left out: {left})")
    with steps("write"), quiet():
        try:
            buffer = edge.to_executorch().buffer
        except Exception as exc:  # noqa: BLE001
            raise ExportError(f"ExecuTorch could not write {path.name}: {first_line(exc)}") from exc
        Path(path).write_bytes(buffer)
    return record


def for_xnnpack(module: nn.Module) -> nn.Module:
    """A copy of the inference module with every operator XNNPACK runs: squeeze-excite's hard-sigmoid
    folded into its convolution and a clamp (``graph.fold_hardsigmoid``)."""
    return fold_hardsigmoid(copy.deepcopy(module)).eval()


def to_pte(module: nn.Module, example: torch.Tensor, path: Path, *, dynamic: bool = False, opset: int = 0,
           verbose: bool = False, steps: Steps = NO_STEPS, outputs: Sequence[str] = ("logits",)) -> None:
    """fp32 ``.pte``: ``torch.export`` of the inference module, wholly delegated to XNNPACK (fixed batch).
    A program's outputs are numbered, not named: ``outputs`` (the sidecar's names) is accepted for
    the converter interface."""
    with steps("trace"), quiet():
        try:
            program = torch.export.export(for_xnnpack(module), (example,))
        except Exception as exc:  # noqa: BLE001
            raise ExportError(f"torch.export failed: {first_line(exc)}") from exc
    write_program(program, path, steps=steps)


def quantize_pte(src, dst: str | os.PathLike, calib: np.ndarray, *, module: nn.Module, example: torch.Tensor,
                 **_) -> Path:
    """int8 ``.pte``: PT2E with the XNNPACK quantizer (per-channel symmetric int8 weights, static int8
    activations) calibrated on ``calib`` (in the module's layout), then lowered like fp32. ``src``
    (the fp32 file) is not read: the quantizer works on the torch graph."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    b = example.shape[0]
    if len(calib) < b:
        raise UsageError(f"{len(calib)} calibration images for a model with a fixed batch of {b}")
    with quiet():
        try:
            m = prepare_pt2e(torch.export.export(for_xnnpack(module), (example,)).module(), quantizer)
            with torch.no_grad():
                for i in range(0, len(calib) - b + 1, b):
                    m(torch.from_numpy(np.ascontiguousarray(calib[i:i + b])))
            m = convert_pt2e(m)
            program = torch.export.export(m, (example,))
        except Exception as exc:  # noqa: BLE001
            raise ExportError(f"ExecuTorch int8 quantization failed: {first_line(exc)}") from exc
    write_program(program, Path(dst))
    return Path(dst)


def peer_pte(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    """How ExecuTorch's XNNPACK tutorial exports a model: ``torch.export`` of the module as it is,
    ``to_edge_transform_and_lower`` with the XNNPACK partitioner, no check of what was delegated."""
    with quiet():
        edge = _lower(torch.export.export(module.eval(), (example,)))
        Path(path).write_bytes(edge.to_executorch().buffer)


def set_threads(n: int) -> None:
    """ExecuTorch's kernels share one process-wide thread pool: size it to ``n``."""
    from executorch.extension.pybindings import portable_lib
    if portable_lib._threadpool_get_thread_count() != n:
        portable_lib._unsafe_reset_threadpool(n)


class ExecuTorchSession(Session):
    """A ``.pte`` program in ExecuTorch's Python runtime (fixed batch; its XNNPACK thread pool sized
    to ``threads``, process-wide)."""

    backend = "executorch"

    def __init__(self, path: Path, **kw):
        rt = RUNTIME.require()
        super().__init__(path=Path(path), **kw)
        if self.precision not in ("fp32", "int8"):
            raise UsageError(f"executorch runs fp32 or int8 programs, not {self.precision}")
        try:
            with quiet():  # the runtime logs its CPU probing
                set_threads(self.threads)
                program = rt.Runtime.get().load_program(Path(path))
                self.method = program.load_method("forward")
                meta = self.method.metadata.input_tensor_meta(0)
                shape = list(meta.sizes())
                outputs = self.method.metadata.num_outputs()
        except Exception as exc:  # noqa: BLE001
            raise load_error("executorch", path, exc) from None
        self._declare_input(shape, fixed_batch=True)
        self._name_outputs([f"output_{i}" for i in range(outputs)], by_position=True)

    def _run_all(self, x: np.ndarray) -> list[np.ndarray]:
        return [y.numpy() for y in self.method.execute([torch.from_numpy(x)])]


RUNTIME = Runtime(backend="executorch", module="executorch.runtime", package="executorch", dist="executorch",
                  format="executorch", suffix=".pte", precisions=("fp32", "int8"),
                  export_precisions=("fp32", "int8"), dynamic_batch=False, convert=to_pte,
                  quantize=quantize_pte, quantizer=(("torchao.quantization.pt2e", "torchao"),), int8_from="module",
                  session=ExecuTorchSession, peer_convert=peer_pte,
                  export_cost={"fp32": 3.0, "int8": 10.0})  # XNNPACK lowering (PT2E for int8): tens of seconds
