"""Serve models over HTTP: the Open Inference Protocol (KServe v2, as Triton speaks it), an image
endpoint with labelled top-k, dynamic batching, Prometheus metrics and a graceful shutdown.

One module per concern: ``protocol`` (request and response bodies, the binary-tensor extension),
``batching`` (per-model dynamic batcher, bounded queue), ``images`` (safe decoding), ``metrics``
(Prometheus), ``models`` (what is served, on which runtime), ``app`` (the HTTP API,
``create_app``) and ``server`` (uvicorn, SIGTERM; ``serve``). Needs the ``serve`` extra.
"""
from .app import Limits, create_app
from .batching import BatchPolicy
from .models import ServedModel, load_models
from .server import build_server, serve

__all__ = ["BatchPolicy", "Limits", "ServedModel", "build_server", "create_app", "load_models", "serve"]
