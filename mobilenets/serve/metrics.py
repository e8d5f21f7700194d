"""Prometheus metrics of one server, in a registry of its own (two apps in one process never mix
their counts), served at ``/metrics`` in Prometheus' text format.

Every series is labelled by model: a model the server serves, ``""`` for requests that name none
(health, metadata of the server, ``/metrics``) and ``"_unknown"`` for names it does not serve, so
that clients cannot grow the label set. Endpoints are labelled by route template.
"""
from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

UNKNOWN = "_unknown"
LATENCY_BUCKETS = (.001, .0025, .005, .01, .025, .05, .075, .1, .15, .25, .5, .75, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """The server's series: requests and errors by model, endpoint and code, request latency, batch
    sizes and run times, queue depth and requests in flight."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, models: list[str]):
        self.models = set(models)
        r = self.registry = CollectorRegistry()
        self.requests = Counter("mobilenets_requests", "HTTP requests answered, by model, endpoint and status code",
                                ["model", "endpoint", "code"], registry=r)
        self.errors = Counter("mobilenets_errors", "Requests refused or failed, by model, status code and kind",
                              ["model", "code", "kind"], registry=r)
        self.latency = Histogram("mobilenets_request_duration_seconds", "Time from request to response, by "
                                 "model and endpoint", ["model", "endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("mobilenets_batch_size", "Images per inference run", ["model"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("mobilenets_batch_duration_seconds", "Time of one inference run", ["model"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("mobilenets_queue_depth", "Images waiting for a batch", ["model"], registry=r)
        self.in_flight = Gauge("mobilenets_requests_in_flight", "Requests being handled", registry=r)
        for m in models:
            self.queue_depth.labels(m).set(0)

    def model_label(self, name: str | None) -> str:
        return "" if name is None else name if name in self.models else UNKNOWN

    def error(self, model: str | None, code: int, kind: str) -> None:
        self.errors.labels(self.model_label(model), str(code), kind).inc()

    def batch(self, model: str, images: int, seconds: float) -> None:
        self.batch_size.labels(model).observe(images)
        self.batch_seconds.labels(model).observe(seconds)

    def depth(self, model: str, images: int) -> None:
        self.queue_depth.labels(model).set(images)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """ASGI middleware that counts every HTTP request with its status and latency (labels read
    from the route that handled it)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500  # what the client sees if the app fails before starting a response
        start = time.perf_counter()

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        m = self.metrics
        m.in_flight.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            m.in_flight.dec()
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "_unmatched"
            model = m.model_label((scope.get("path_params") or {}).get("model_name"))
            m.requests.labels(model, endpoint, str(status)).inc()
            m.latency.labels(model, endpoint).observe(time.perf_counter() - start)
