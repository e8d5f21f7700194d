"""PyTorch itself as a runtime: eager, ``torch.compile``, and CUDA graphs, on the CPU or a CUDA GPU.

The device logic (``core.hardware.resolve_device``, ``check_mode``) is plain functions, so what a GPU
run would do is decided, and tested, without a GPU. bf16 runs through autocast (CPU or CUDA), fp16 through CUDA
autocast; CUDA graphs capture one graph per input shape and replay it.
"""
from __future__ import annotations

import copy

import numpy as np
import torch

from ...core.errors import UsageError
from ...core.hardware import resolve_device
from ...models.network import unwrap
from ..graph import output_list
from ..tasks import find_task
from .base import Runtime, Session

MODES = {"torch": "eager", "compile": "torch.compile", "cudagraphs": "CUDA graphs"}


def check_mode(backend: str, device: torch.device, precision: str) -> None:
    """What each mode runs: CUDA graphs need a CUDA device; fp16 runs on CUDA only; int8 runs on the
    file runtimes."""
    if backend not in MODES:
        raise UsageError(f"unknown torch mode {backend!r}; known: {', '.join(MODES)}")
    if backend == "cudagraphs" and device.type != "cuda":
        raise UsageError("the cudagraphs backend replays CUDA graphs: add --device cuda")
    if precision == "int8":
        raise UsageError("the torch backends run fp32, bf16 (and fp16 on CUDA); int8 runs on the exported "
                         "runtimes (onnxruntime, openvino, litert, executorch, mnn...)")
    if precision == "fp16" and device.type != "cuda":
        raise UsageError("fp16 in PyTorch runs on CUDA: add --device cuda, or use bf16 on the CPU")


class TorchSession(Session):
    """A module in PyTorch: ``backend`` "torch" (eager), "compile" (``torch.compile``) or "cudagraphs"
    (captured once per input shape, replayed), on ``device``."""

    def __init__(self, model, *, backend: str = "torch", device: str | None = "cpu", **kw):
        super().__init__(**kw)
        self.backend = backend
        self.torch_device = resolve_device(device or "cpu")
        self.device = str(self.torch_device)
        check_mode(backend, self.torch_device, self.precision)
        torch.set_num_threads(self.threads)
        # a copy on another device: the caller's module stays where it is (profiling, other sessions use it)
        self.model = (model if self.torch_device.type == "cpu" else copy.deepcopy(model)).eval().to(self.torch_device)
        self._fn = torch.compile(self.model) if backend == "compile" else self.model
        self._graphs: dict[tuple, tuple] = {}
        config = getattr(unwrap(model), "config", None)
        if config is not None:
            self.input_shape = (None, config.in_chans, config.resolution, config.resolution)
        task = find_task(model)
        self.output_names = list(task.outputs) if task else []
        if task is not None and task.kind == "detection":
            self.input_layout = task.input_layout

    def _autocast(self):
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        # no cast cache under CUDA graphs: a capture must not keep tensors cast outside it
        return torch.autocast(self.torch_device.type, dtype or torch.float32, enabled=dtype is not None,
                              cache_enabled=self.backend != "cudagraphs")

    def _run_all(self, x: np.ndarray) -> list[np.ndarray]:
        """Every output, in the export's order (``graph.output_list``); a detector runs on the one image ``x``."""
        t = torch.from_numpy(x)
        if self.backend == "cudagraphs":
            return [self._replay(t)]
        t = t.to(self.torch_device, non_blocking=True)
        with torch.inference_mode(), self._autocast():
            value = self._fn([t]) if self.input_layout == "CHW" else self._fn(t)
        return [(o.float() if o.is_floating_point() else o).cpu().numpy() for o in output_list(value)]

    def _replay(self, t: torch.Tensor) -> np.ndarray:
        """Copy ``t`` into the captured input buffer, replay the graph of its shape, read the output."""
        key = tuple(t.shape)
        if key not in self._graphs:
            self._graphs[key] = self._capture(t)
        graph, static_in, static_out = self._graphs[key]
        static_in.copy_(t, non_blocking=True)
        graph.replay()
        return static_out.float().cpu().numpy()

    def _capture(self, t: torch.Tensor) -> tuple:
        static_in = t.to(self.torch_device).clone()
        stream = torch.cuda.Stream(self.torch_device)
        stream.wait_stream(torch.cuda.current_stream(self.torch_device))
        with torch.inference_mode(), torch.cuda.stream(stream), self._autocast():
            for _ in range(3):  # warm-up on a side stream, as capture requires
                self.model(static_in)
        torch.cuda.current_stream(self.torch_device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph), self._autocast():
            static_out = self.model(static_in)
        return graph, static_in, static_out


_MODE = dict(module="torch", package="torch", precisions=("fp32", "bf16", "fp16"), export_cost={"fp32": 0.0})
EAGER = Runtime(backend="torch", devices=("cpu", "cuda"), **_MODE)
COMPILE = Runtime(backend="compile", devices=("cpu", "cuda"), **_MODE)
CUDAGRAPHS = Runtime(backend="cudagraphs", devices=("cuda",), **_MODE,
                     runs_here=lambda: None if torch.cuda.is_available() else "CUDA graphs need a CUDA GPU")
