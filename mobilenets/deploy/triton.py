"""A Triton model repository from a classifier: ``export_triton(model, repo)``.

Writes ``REPO/<name>/``:

* ``1/model.onnx`` (ONNX Runtime backend) or ``1/model.xml`` + ``.bin`` (OpenVINO backend): the
  verified export (``export``) with a dynamic batch, so Triton can batch requests, and its JSON
  sidecar (preprocessing, class names);
* ``config.pbtxt``: the backend, ``max_batch_size``, the input ``input`` (FP32, 3 x H x W) and the
  output ``logits`` (FP32, classes) with ``label_filename``, ``dynamic_batching`` with
  ``max_queue_delay_microseconds``, one CPU instance;
* ``labels.txt``: one class name per line, which Triton's classification extension reports.

The folder is built in a staging folder inside ``REPO`` and moved into place whole
(``core.files.publish``): a reader sees the old model or the new one, never a mix, and a failed
export leaves nothing. ``model_config`` is the same configuration as a dict, the form Triton's
``/v2/models/<name>/config`` answers in (``mobilenets serve`` answers it too).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import UsageError
from ..core.files import publish, staging_dir
from ..data.labels import class_names_for
from ..weights.resolve import resolve_model
from .common import Steps
from .export import ExportResult, export
from .tasks import task_of

# Triton backend -> (our export format, the file Triton loads)
BACKENDS = {"onnxruntime": ("onnx", "model.onnx"), "openvino": ("openvino", "model.xml")}
INPUT_NAME, OUTPUT_NAME = "input", "logits"  # the names our exports give a classifier's tensors
LABELS_FILE = "labels.txt"
DEFAULT_MAX_BATCH = 32
DEFAULT_DELAY_US = 2000
_ENUMS = ("data_type", "kind")  # fields whose values are protobuf enums, written unquoted


@dataclass
class TritonResult:
    repository: Path
    name: str
    model_dir: Path
    config: dict
    export: ExportResult

    def to_dict(self) -> dict:
        return {"repository": str(self.repository), "name": self.name, "model_dir": str(self.model_dir),
                "config": self.config, "export": self.export.to_dict()}


def model_config(name: str, *, backend: str, resolution: int, num_classes: int, max_batch: int = DEFAULT_MAX_BATCH,
                 max_queue_delay_us: int = DEFAULT_DELAY_US, in_chans: int = 3,
                 label_filename: str | None = LABELS_FILE) -> dict:
    """Triton's model configuration of a classifier (its JSON form)."""
    output = {"name": OUTPUT_NAME, "data_type": "TYPE_FP32", "dims": [num_classes]}
    if label_filename:
        output["label_filename"] = label_filename
    return {"name": name, "backend": backend, "max_batch_size": max_batch,
            "input": [{"name": INPUT_NAME, "data_type": "TYPE_FP32", "dims": [in_chans, resolution, resolution]}],
            "output": [output],
            "dynamic_batching": {"max_queue_delay_microseconds": max_queue_delay_us},
            "instance_group": [{"kind": "KIND_CPU", "count": 1}]}


def to_pbtxt(config: dict, indent: int = 0) -> str:
    """``config`` (``model_config``'s form) in protobuf text format, as ``config.pbtxt`` holds it."""
    pad, lines = " " * indent, []
    for key, value in config.items():
        if isinstance(value, dict):
            lines += [f"{pad}{key} {{", to_pbtxt(value, indent + 2), f"{pad}}}"]
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            items = [f"{pad}  {{\n{to_pbtxt(v, indent + 4)}\n{pad}  }}" for v in value]
            lines += [f"{pad}{key} [", ",\n".join(items), f"{pad}]"]
        elif isinstance(value, list):
            lines.append(f"{pad}{key}: [ {', '.join(_scalar(key, v) for v in value)} ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(key, value)}")
    return "\n".join(lines)


def _scalar(key: str, value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str) and key not in _ENUMS:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(value)


def export_triton(model, repository: str | os.PathLike, *, backend: str = "onnxruntime", name: str | None = None,
                  max_batch: int = DEFAULT_MAX_BATCH, max_queue_delay_us: int = DEFAULT_DELAY_US,
                  weights: str | None = None, resolution: int | None = None, precision: str | None = None,
                  int8: bool = False, calib=None, calib_size: int | None = None, min_agreement: float = 0.5,
                  verify: bool = True, steps: Steps | None = None) -> TritonResult:
    """Write ``model`` (a classifier: what ``weights.resolve_model`` accepts but an exported file) as the
    model ``name`` of the Triton repository ``repository`` (see the module docstring), replacing a
    model of that name. ``name`` defaults to ``<model>-w<width>-r<resolution>``; the export options
    (``weights``, ``resolution``, ``precision``, ``int8``, ``calib``...) are ``export``'s."""
    if backend not in BACKENDS:
        raise UsageError(f"unknown Triton backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if max_batch < 1 or max_queue_delay_us < 0:
        raise UsageError(f"max_batch must be >= 1 and max_queue_delay_us >= 0, got {max_batch}, {max_queue_delay_us}")
    if name is not None and (not name or name in (".", "..") or any(c in name for c in "/\\\0")):
        raise UsageError(f"a Triton model name is a folder name, not {name!r}")
    resolved = resolve_model(model, weights, pretrained=True)
    if resolved.is_export:
        raise UsageError(f"{resolved.path.name} is already exported: give the model or checkpoint it came from")
    task = task_of(resolved.model)
    if task.kind != "classification":
        raise UsageError(f"the Triton repository is written for classifiers, not {task.name}")
    net = resolved.model
    res = int(resolution or net.config.resolution)
    name = name or f"{task.stem()}-r{res}"
    fmt, filename = BACKENDS[backend]
    repository = Path(repository)
    extra = {} if calib_size is None else {"calib_size": calib_size}
    with staging_dir(repository) as work:
        folder = work / name
        result = export(net, fmt, folder / "1" / filename, batch="dynamic", resolution=res, precision=precision,
                        int8=int8, calib=calib, min_agreement=min_agreement, verify=verify, steps=steps, **extra)
        config = model_config(name, backend=backend, resolution=res, num_classes=net.config.num_classes,
                              max_batch=max_batch, max_queue_delay_us=max_queue_delay_us,
                              in_chans=net.config.in_chans)
        labels = class_names_for(net.config.num_classes, resolved.class_names)
        (folder / LABELS_FILE).write_text("".join(f"{label}\n" for label in labels))
        (folder / "config.pbtxt").write_text(to_pbtxt(config) + "\n")
        final = publish(folder, repository / name)
    result.files = [final / f.relative_to(folder) for f in result.files]
    result.path, result.sidecar = final / "1" / filename, final / "1" / result.sidecar.name
    return TritonResult(repository, name, final, config, result)
