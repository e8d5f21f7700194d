"""The HTTP API: ``create_app(models, limits)``, a Starlette (ASGI) app.

The Open Inference Protocol (KServe v2; Triton's HTTP API), so that ``tritonclient`` and KServe's
clients work against it unchanged:

* ``GET /v2/health/live``, ``GET /v2/health/ready`` (503 once shutting down);
* ``GET /v2``: server metadata; ``POST /v2/repository/index``: the models (Triton's extension);
* ``GET /v2/models/{name}[/versions/{v}]``: model metadata: input ``input`` FP32 [-1, 3, H, W],
  output ``logits`` FP32 [-1, classes], and in ``parameters`` the preprocessing the input must
  have had; ``.../ready``; ``.../config``: Triton's model configuration (``deploy.triton``);
* ``POST /v2/models/{name}[/versions/{v}]/infer``: JSON tensors or Triton's binary-tensor extension
  (``protocol``), the logits out, or top-k labels with Triton's classification extension.

Beside it, ``POST /v2/models/{name}[/versions/{v}]/classify[?top=5]``: an image (the raw body, or
the first file of a multipart form) -> ``{"model_name", "model_version", "top": [{"label",
"index", "prob"}...]}``, decoded safely (``images``) and preprocessed as ``mobilenets predict``
does. ``GET /metrics``: Prometheus (``metrics``).

Every error is JSON, ``{"error": "..."}``, with the status that says whose fault it is: 400 a
request that breaks the protocol or does not fit the model (malformed JSON, wrong shape or dtype,
more images than the model's largest batch), 404 an unknown model or version, 413 a body over
``max_body_bytes`` or an image over ``max_pixels``, 415 a body that is not an image, 422 an
image that cannot be decoded (truncated), 408 a body not received within the timeout, 503 with
``Retry-After`` a full queue or a server shutting down, 504 no answer within the timeout, 500 a
failure of the runtime (logged). A failed request never stops the server.

Work is kept off the event loop: decoding, JSON parsing and encoding run on ``limits.workers``
threads, the models on one inference thread (``batching``), each model's runtime using every
core for its batch, so the two kinds of work overlap without oversubscribing the machine.
"""
from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np
import torch
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..deploy.triton import OUTPUT_NAME
from ..predict import Top
from .batching import Batcher
from .images import MAX_PIXELS, ImageInput
from .metrics import Metrics, MetricsMiddleware
from .models import ServedModel, usable_cores
from .protocol import (
    HEADER_LENGTH,
    InferRequest,
    RequestedOutput,
    ServeError,
    classification,
    decompress,
    encode_infer_response,
    parse_infer_request,
)

EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration"]


@dataclass(frozen=True)
class Limits:
    """What one server takes on: bodies up to ``max_body_bytes`` (also once inflated), images up to
    ``max_pixels``, at most ``max_requests`` model requests at once (more: 503), each answered
    within ``timeout_s``; ``workers`` threads decode and parse (0: one per usable core)."""
    max_body_bytes: int = 32 * 2**20
    max_pixels: int = MAX_PIXELS
    max_requests: int = 512
    timeout_s: float = 30.0
    workers: int = 0

    def __post_init__(self):
        if min(self.max_body_bytes, self.max_pixels, self.max_requests) < 1 or self.timeout_s <= 0 \
                or self.workers < 0:
            raise ValueError(f"limits must be positive, got {self}")


class Serving:
    """The server's state: the models, their batchers, the thread pools, the metrics, and whether it
    is draining (after SIGTERM: no new model requests, the queued ones run at once)."""

    def __init__(self, models: list[ServedModel], limits: Limits):
        self.models = {m.name: m for m in models}
        self.limits = limits
        self.metrics = Metrics(list(self.models))
        self.images = {m.name: ImageInput(m.preprocessing, limits.max_pixels) for m in models}
        self.batchers: dict[str, Batcher] = {}
        self.draining = False
        self.active = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.prep: ThreadPoolExecutor | None = None
        self.infer: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        workers = self.limits.workers or usable_cores()
        # torch's intra-op threads are per thread: one each for decoding (torchvision's resize), every
        # core for the torch runtime's batches; other runtimes keep the threads their sessions were opened with
        self.prep = ThreadPoolExecutor(workers, "serve-prep", initializer=torch.set_num_threads, initargs=(1,))
        threads = max((m.session.threads for m in self.models.values()), default=1)
        self.infer = ThreadPoolExecutor(1, "serve-infer", initializer=torch.set_num_threads, initargs=(threads,))
        for name, model in self.models.items():
            b = Batcher(model.session.run, model.policy, self.infer,
                        on_batch=lambda n, s, name=name: self.metrics.batch(name, n, s),
                        on_depth=lambda n, name=name: self.metrics.depth(name, n))
            b.start()
            self.batchers[name] = b

    def drain(self) -> None:
        """Stop taking model requests; run what is queued without waiting for fuller batches."""
        self.draining = True
        for b in self.batchers.values():
            b.flush()

    async def stop(self) -> None:
        self.drain()
        for b in self.batchers.values():
            await b.close()
        for pool in (self.prep, self.infer):
            if pool is not None:
                pool.shutdown(wait=True)

    def model(self, request: Request) -> ServedModel:
        name = request.path_params["model_name"]
        model = self.models.get(name)
        if model is None:
            raise ServeError(404, f"unknown model {name!r}; this server serves {', '.join(sorted(self.models))}",
                             "unknown_model")
        version = request.path_params.get("version")
        if version is not None and version != model.version:
            raise ServeError(404, f"model {name!r} has no version {version!r}; its version is {model.version!r}",
                             "unknown_version")
        return model

    async def prepare(self, fn: Callable, *args):
        """``fn(*args)`` on a prep thread."""
        return await self.loop.run_in_executor(self.prep, fn, *args)

    @contextlib.asynccontextmanager
    async def admitted(self):
        """A model request's slot: refused (503) while draining or when ``max_requests`` are running."""
        if self.draining:
            raise ServeError(503, "the server is shutting down", "shutting_down", {"Retry-After": "1"})
        if self.active >= self.limits.max_requests:
            raise ServeError(503, f"{self.active} requests are running, the most this server takes; retry later",
                             "busy", {"Retry-After": "1"})
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` (by its Content-Length, or counted as it
    arrives) is refused with a 413 ``ServeError`` raised where the app reads it, so the error is JSON
    and counted against the model it was for; the app never holds more of a body than the limit (uvicorn
    reads and drops the rest, so the connection stays usable)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        seen = int(declared) if declared.isdigit() else 0

        async def limited():
            nonlocal seen
            if seen > self.max_bytes:
                raise self.error()
            message = await receive()
            if message["type"] == "http.request" and not declared:
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise self.error()
            return message

        await self.app(scope, limited, send)

    def error(self) -> ServeError:
        return ServeError(413, f"the body is larger than the limit of {self.max_bytes} bytes", "too_large")


class _Deadline:
    """``async with``: the request's timeout; ``phase`` says which code it gets (408 reading, 504 after)."""

    def __init__(self, seconds: float):
        self.seconds, self.phase = seconds, "read"
        self._timeout = asyncio.timeout(seconds)

    async def __aenter__(self):
        await self._timeout.__aenter__()
        return self

    async def __aexit__(self, kind, exc, tb):
        try:
            return await self._timeout.__aexit__(kind, exc, tb)
        except TimeoutError:
            if self.phase == "read":
                raise ServeError(408, f"the body did not arrive within the timeout of {self.seconds:g} s",
                                 "timeout") from None
            raise ServeError(504, f"no answer within the timeout of {self.seconds:g} s", "timeout") from None


def create_app(models: list[ServedModel], limits: Limits | None = None) -> Starlette:
    """The server's ASGI app for ``models`` (see the module docstring)."""
    limits = limits or Limits()
    s = Serving(models, limits)
    version = importlib.metadata.version("mobilenets")

    async def live(request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(request: Request) -> Response:
        return JSONResponse({"ready": not s.draining}, status_code=503 if s.draining else 200)

    async def server_metadata(request: Request) -> Response:
        return JSONResponse({"name": "mobilenets", "version": version, "extensions": EXTENSIONS})

    async def repository_index(request: Request) -> Response:
        return JSONResponse([{"name": m.name, "version": m.version, "state": "READY"} for m in s.models.values()])

    async def model_metadata(request: Request) -> Response:
        return JSONResponse(s.model(request).metadata())

    async def model_ready(request: Request) -> Response:
        s.model(request)
        return JSONResponse({"ready": not s.draining}, status_code=503 if s.draining else 200)

    async def model_config(request: Request) -> Response:
        return JSONResponse(s.model(request).config())

    async def infer(request: Request) -> Response:
        model = s.model(request)
        async with s.admitted(), _Deadline(limits.timeout_s) as deadline:
            body = await request.body()
            deadline.phase = "run"
            req = await s.prepare(_infer_request, body, request.headers, limits.max_body_bytes)
            x = model.input_of(req.inputs)
            wanted = _outputs(model, req)
            logits = await s.batchers[model.name].submit(x)
            values = [(w, classification(logits, w.classification, model.labels) if w.classification else logits)
                      for w in wanted]
            content, headers = await s.prepare(encode_infer_response, model.name, model.version, req.id, values)
        return Response(content, headers=headers)

    async def classify(request: Request) -> Response:
        model = s.model(request)
        top = _top(request, model.num_classes)
        async with s.admitted(), _Deadline(limits.timeout_s) as deadline:
            data = await _image_bytes(request, limits)
            deadline.phase = "run"
            x = await s.prepare(s.images[model.name], data)
            logits = (await s.batchers[model.name].submit(x))[0]
        p = np.exp(logits - logits.max())
        p /= p.sum()
        best = np.argsort(-p, kind="stable")[:top]
        return JSONResponse({"model_name": model.name, "model_version": model.version,
                             "top": [asdict(Top(model.labels[i], int(i), float(p[i]))) for i in best]})

    async def metrics(request: Request) -> Response:
        return Response(s.metrics.render(), media_type=s.metrics.content_type)

    def error(request: Request, exc: Exception) -> Response:
        """Every refusal as the protocol's JSON error, counted by model, code and kind."""
        if isinstance(exc, ServeError):
            status, message, kind, headers = exc.status, exc.message, exc.kind, exc.headers
        elif isinstance(exc, HTTPException):
            status, headers = exc.status_code, dict(exc.headers or {})
            kind = {404: "no_route", 405: "method"}.get(status, "invalid")
            message = {404: f"no such endpoint: {request.method} {request.url.path}",
                       405: f"{request.method} is not allowed on {request.url.path}"}.get(status, str(exc.detail))
        else:  # a failure of ours or of the runtime; uvicorn logs its traceback
            status, message, kind, headers = 500, f"internal error: {type(exc).__name__}: {exc}"[:300], "internal", {}
        s.metrics.error(request.path_params.get("model_name"), status, kind)
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await s.start()
        try:
            yield
        finally:
            await s.stop()

    def both(path: str, endpoint, methods: list[str]) -> list[Route]:
        """``path`` under ``/v2/models/{model_name}`` and under its ``/versions/{version}``."""
        return [Route(f"/v2/models/{{model_name}}{path}", endpoint, methods=methods),
                Route(f"/v2/models/{{model_name}}/versions/{{version}}{path}", endpoint, methods=methods)]

    routes = [Route("/v2/health/live", live), Route("/v2/health/ready", ready), Route("/v2", server_metadata),
              Route("/v2/repository/index", repository_index, methods=["POST"]),
              Route("/metrics", metrics),
              *both("", model_metadata, ["GET"]), *both("/ready", model_ready, ["GET"]),
              *both("/config", model_config, ["GET"]), *both("/infer", infer, ["POST"]),
              *both("/classify", classify, ["POST"])]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={ServeError: error, HTTPException: error, Exception: error})
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=s.metrics)
    app.state.serving = s
    return app


def _infer_request(body: bytes, headers, limit: int) -> InferRequest:
    """An infer request's body, inflated and parsed (``protocol``)."""
    return parse_infer_request(decompress(body, headers.get("content-encoding"), limit), headers.get(HEADER_LENGTH))


def _outputs(model: ServedModel, req: InferRequest) -> list[RequestedOutput]:
    """The outputs a request asks for (none named: the logits, in binary if the request says so), checked."""
    if req.outputs is None:
        return [RequestedOutput(OUTPUT_NAME, req.binary_output)]
    for w in req.outputs:
        if w.name != OUTPUT_NAME:
            raise ServeError(400, f"model {model.name!r} has no output {w.name!r}; its output is {OUTPUT_NAME!r}",
                             "outputs")
    return req.outputs


def _top(request: Request, classes: int) -> int:
    """The ``top`` query parameter: how many classes to return (default 5, at most all)."""
    text = request.query_params.get("top", "5")
    try:
        top = int(text)
    except ValueError:
        top = 0
    if top < 1:
        raise ServeError(400, f"top must be a positive integer, got {text!r}", "invalid")
    return min(top, classes)


async def _image_bytes(request: Request, limits: Limits) -> bytes:
    """The image of a classify request: the first file of a multipart form, else the body."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        async with request.form(max_files=1, max_fields=16, max_part_size=limits.max_body_bytes) as form:
            files = [v for v in form.values() if isinstance(v, UploadFile)]
            if not files:
                raise ServeError(400, "the multipart form has no file: send the image as a file field", "no_file")
            return await files[0].read()
    body = await request.body()
    return decompress(body, request.headers.get("content-encoding"), limits.max_body_bytes)
