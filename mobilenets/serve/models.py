"""What the server serves: ``ServedModel``, a classifier opened on its runtime under a name.

``load_models(["NAME=TARGET", "TARGET", ...])`` opens each target with ``deploy.runtimes.open_session``
(a checkpoint, a training run, an exported file, a model name; checkpoints are read without
executing code: safetensors, or ``torch.load(weights_only=True)``) and names it: ``NAME=`` when
given, else the file's stem (a file in a Triton repository, ``REPO/<name>/<version>/model.onnx``,
takes its model's name), the run folder's name, or the model name.

The runtime, unless one is asked for: the first installed of ``PREFERENCE`` that runs the target
(OpenVINO, then ONNX Runtime, then PyTorch), the runtime of the file otherwise. This fixed order
stands in for measuring at every start: on x86 CPUs OpenVINO runs batched MobileNets at least as
fast as ONNX Runtime, and both beat eager PyTorch (``mobilenets bench`` measures it on a machine).

Each model is run at every batch size it will see (1 to its largest) when loaded: the first requests
pay no warm-up, a model that cannot run is an error at start rather than at the first request,
and memory is steady from the start (OpenVINO keeps buffers per input shape: a server warmed at
one size grows by tens of MB over its first minutes under load as new batch sizes come).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import UsageError
from ..core.preprocessing import Preprocessing
from ..data.labels import class_names_for
from ..deploy.runtimes import RUNTIMES, Session, by_suffix, open_session
from ..deploy.triton import INPUT_NAME, OUTPUT_NAME, model_config
from ..weights.resolve import EXPORT_SUFFIXES
from .batching import BatchPolicy
from .protocol import ServeError, Tensor

PREFERENCE = ("openvino", "onnxruntime", "torch")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
VERSION = "1"


@dataclass
class ServedModel:
    """A classifier the server runs: ``session`` on N x C x H x W float32, its ``labels`` and the
    ``preprocessing`` its images get, batched by ``policy``."""
    name: str
    session: Session
    policy: BatchPolicy
    num_classes: int
    labels: list[str]
    version: str = VERSION

    @property
    def backend(self) -> str:
        return self.session.backend

    @property
    def preprocessing(self) -> Preprocessing:
        return self.session.feed()

    @property
    def input_dims(self) -> tuple[int, int, int]:
        res = self.preprocessing.resolution
        return (3, res, res)

    def metadata(self) -> dict:
        """The protocol's model metadata, with ``parameters``: the preprocessing that the input
        tensor must have had, the runtime and the largest batch."""
        return {"name": self.name, "versions": [self.version], "platform": f"mobilenets_{self.backend}",
                "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, *self.input_dims]}],
                "outputs": [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, self.num_classes]}],
                "parameters": {"preprocessing": self.preprocessing.to_dict(), "backend": self.backend,
                               "max_batch_size": self.policy.max_batch}}

    def config(self) -> dict:
        """Triton's model configuration of this model (``deploy.triton.model_config``)."""
        return model_config(self.name, backend=f"mobilenets_{self.backend}", resolution=self.input_dims[1],
                            num_classes=self.num_classes, max_batch=self.policy.max_batch,
                            max_queue_delay_us=round(self.policy.max_delay_s * 1e6), label_filename=None)

    def input_of(self, tensors: list[Tensor]) -> np.ndarray:
        """The model's input from a request's tensors: exactly one, named ``input``, FP32,
        N x 3 x H x W at the model's resolution (a 400 naming what differs otherwise)."""
        if len(tensors) != 1:
            raise ServeError(400, f"model {self.name!r} takes one input, {INPUT_NAME!r}; got {len(tensors)}",
                             "inputs")
        t = tensors[0]
        if t.name != INPUT_NAME:
            raise ServeError(400, f"model {self.name!r} has no input {t.name!r}; its input is {INPUT_NAME!r}",
                             "inputs")
        if t.datatype != "FP32":
            raise ServeError(400, f"input {INPUT_NAME!r} of model {self.name!r} is FP32, not {t.datatype}", "dtype")
        want = [-1, *self.input_dims]
        if len(t.shape) != 4 or tuple(t.shape[1:]) != self.input_dims or t.shape[0] < 1:
            raise ServeError(400, f"input {INPUT_NAME!r} of model {self.name!r} has shape {want} (N >= 1), "
                             f"got {list(t.shape)}", "shape")
        return np.ascontiguousarray(t.data, dtype=np.float32)


def parse_target(spec: str) -> tuple[str | None, str]:
    """``"NAME=TARGET"`` -> (NAME, TARGET); a plain target (even one with "=" in its path) -> (None, spec)."""
    name, sep, target = spec.partition("=")
    if sep and NAME.fullmatch(name) and not Path(spec).exists():
        return name, target
    return None, spec


def default_name(target: str) -> str:
    """The name a target is served under without ``NAME=``."""
    path = Path(target)
    if not (path.exists() or path.suffix or os.sep in target):
        return target  # a model name
    parts = path.resolve().parts
    if len(parts) >= 3 and parts[-2].isdigit() and path.stem == "model":  # a Triton repository's file
        return parts[-3]
    return path.name if path.is_dir() and path.suffix.lower() not in EXPORT_SUFFIXES else path.stem


def default_backend(target: str) -> str | None:
    """The runtime to serve ``target`` on: the first installed of ``PREFERENCE`` that opens it, else the
    file's own runtime (None: let ``open_session`` decide)."""
    suffix = Path(target).suffix.lower()
    able = [r.backend for r in by_suffix(suffix)] if suffix in EXPORT_SUFFIXES else list(PREFERENCE)
    ranked = [b for b in PREFERENCE if b in able] + [b for b in able if b not in PREFERENCE]
    for backend in ranked:
        runtime = RUNTIMES[backend]
        if runtime.runs_here() is None and runtime.version() is not None:
            return backend
    return None


def load_model(name: str, target: str, *, backend: str | None = None, threads: int = 1,
               policy: BatchPolicy | None = None) -> ServedModel:
    """Open ``target`` for serving as ``name``; a ``UsageError`` when it cannot run or is not a classifier."""
    if not NAME.fullmatch(name):
        raise UsageError(f"model name {name!r}: use letters, digits, '_', '.' and '-' (serve NAME=TARGET)")
    policy = policy or BatchPolicy()
    session = open_session(target, backend or default_backend(target), threads=threads)
    if len(session.output_names) > 1 or session.input_layout == "CHW":
        raise UsageError(f"{target}: serve runs classifiers (one logits output), not a model with outputs "
                         f"{', '.join(session.output_names)}")
    res = session.feed().resolution
    try:
        for n in range(policy.max_batch, 0, -1):
            logits = session.run(np.zeros((n, 3, res, res), np.float32))
    except UsageError:
        raise
    except Exception as exc:  # noqa: BLE001 -- a runtime's own error: one line
        raise UsageError(f"{target} does not run on {session.backend}: {' '.join(str(exc).split())[:300]}") from None
    if logits.ndim != 2:
        raise UsageError(f"{target}: serve runs classifiers (N x classes logits), not outputs of shape {logits.shape}")
    classes = logits.shape[1]
    return ServedModel(name, session, policy, classes, class_names_for(classes, session.class_names))


def load_models(targets: list[str], *, backend: str | None = None, threads: int | None = None,
                policy: BatchPolicy | None = None) -> list[ServedModel]:
    """Every target of ``targets`` (``NAME=TARGET`` or ``TARGET``) opened for serving; names must differ.
    ``threads``: each session's intra-op threads (default: every core this process may use)."""
    if not targets:
        raise UsageError("serve needs at least one model: a checkpoint, an exported file or NAME=TARGET")
    named = [parse_target(t) for t in targets]
    named = [(name or default_name(target), target) for name, target in named]
    seen: set[str] = set()
    for name, _ in named:
        if name in seen:
            raise UsageError(f"two models are named {name!r}: name them with NAME=TARGET")
        seen.add(name)
    threads = threads or usable_cores()
    return [load_model(name, target, backend=backend, threads=threads, policy=policy) for name, target in named]


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)
