"""Options every verb spells the same way. A verb declares ``output: options.Output = None`` and
gets the same flag, help and checks as every other verb."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import detection, segmentation
from ..core.errors import UsageError

Output = Annotated[Path | None, typer.Option("--output", "-o", help="Where to write the result.")]
BatchSize = Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Images per batch.")]
Device = Annotated[str, typer.Option("--device", help="auto (CUDA if present, else CPU), cpu, cuda, cuda:N, mps.")]
Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout instead of a table.")]
Threads = Annotated[int, typer.Option("--threads", min=1, help="Intra-op threads of the runtime.")]

# Detectors and segmenters on a backbone (profile --task, export --task), by the name their sidecar records.
TASKS = {"ssdlite320": detection.ssdlite320, "fasterrcnn_fpn": detection.fasterrcnn_fpn,
         "lraspp": segmentation.lraspp, "deeplabv3": segmentation.deeplabv3}


def task_builder(task: str):
    """The builder of ``--task`` (``mobilenets.detection`` / ``segmentation``), or a one-line error."""
    if task not in TASKS:
        raise UsageError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    return TASKS[task]
