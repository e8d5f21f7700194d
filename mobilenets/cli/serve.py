"""The ``serve`` verb: a thin layer over ``mobilenets.serve.serve``.

Needs the ``serve`` extra (Starlette, uvicorn, prometheus-client, python-multipart); without it
the verb says what to install, and every other verb works as before.
"""
from __future__ import annotations

from typing import Annotated

import typer

from ..core.errors import UsageError
from ..deploy.runtimes.base import first_words

try:
    from ..serve import BatchPolicy, Limits, serve
except ImportError as exc:  # the serve extra is not installed
    if exc.name not in ("starlette", "uvicorn", "prometheus_client", "multipart", "python_multipart"):
        raise
    serve = BatchPolicy = Limits = None
    MISSING = first_words(exc)


def serve_cmd(
    targets: Annotated[list[str], typer.Argument(help="what to serve: checkpoints, training runs, exported files "
                                                 "or model names, each as TARGET (named after the file) or "
                                                 "NAME=TARGET")],
    host: Annotated[str, typer.Option(help="address to listen on (0.0.0.0: every interface; there is no "
                                      "authentication)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="port (0: any free one, printed)")] = 8000,
    backend: Annotated[str | None, typer.Option(help="runtime for every model (onnxruntime, openvino, torch...) "
                                                "(default: the first installed of openvino, onnxruntime, torch "
                                                "that runs it)", show_default=False)] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="each runtime's threads (default: every usable core)",
                                                show_default=False)] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="threads that decode images and parse requests "
                                                "(default: every usable core)", show_default=False)] = None,
    max_batch: Annotated[int, typer.Option(min=1, help="most images per inference run")] = 32,
    max_delay_ms: Annotated[float, typer.Option(min=0, help="how long a request waits for others to batch with")] = 2.0,
    max_queue: Annotated[int, typer.Option(min=1, help="most images waiting per model (more: 503 with "
                                           "Retry-After)")] = 256,
    max_requests: Annotated[int, typer.Option(min=1, help="most model requests handled at once (more: 503)")] = 512,
    timeout: Annotated[float, typer.Option(min=0.001, help="seconds to answer a request (then 504)")] = 30.0,
    max_body_mb: Annotated[float, typer.Option(min=0.001, help="largest request body, MiB (more: 413)")] = 32.0,
    max_megapixels: Annotated[float, typer.Option(min=0.000001, help="largest image, megapixels (more: 413)")] = 40.0,
    log_level: Annotated[str, typer.Option(help="uvicorn's log level: critical, error, warning, info, "
                                           "debug")] = "warning",
) -> None:
    """Serve models over HTTP with the Open Inference Protocol (KServe v2 / Triton: tritonclient works),
    an image endpoint (POST /v2/models/NAME/classify) and Prometheus metrics (/metrics), until SIGTERM."""
    if serve is None:
        raise UsageError(f"serve needs the serve extra: pip install 'mobilenets[serve]' ({MISSING})")
    try:
        policy = BatchPolicy(max_batch, max_delay_ms / 1000, max_queue)
        limits = Limits(max_body_bytes=int(max_body_mb * 2**20), max_pixels=int(max_megapixels * 1e6),
                        max_requests=max_requests, timeout_s=timeout, workers=workers or 0)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    serve(targets, host=host, port=port, backend=backend, threads=threads, policy=policy, limits=limits,
          log_level=log_level, announce=lambda line: typer.echo(line))


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_cmd)
