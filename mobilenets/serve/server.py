"""Run the server: ``serve(targets, host=..., port=...)`` (what ``mobilenets serve`` calls).

uvicorn serves the app (``app.create_app``) on one event loop. On SIGTERM (or Ctrl+C) it stops
accepting connections, the app stops taking model requests (readiness turns 503) and runs what is
queued without waiting for fuller batches, every request already received is answered, and only
then does the process exit, with status 0. A second Ctrl+C quits at once.

Safe by default: it binds loopback (``127.0.0.1``) unless told otherwise, has no endpoint that
fetches a URL, and refuses bodies, images and queues over the limits (``Limits``, ``BatchPolicy``).
"""
from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import signal
import sys
import threading

import uvicorn

from ..core.errors import UsageError
from .app import Limits, Serving, create_app
from .batching import BatchPolicy
from .models import ServedModel, load_models

GRACE_S = 5.0  # beyond the request timeout, how long a shutdown waits for requests in flight


def _say(line: str) -> None:
    print(line, flush=True)


class Server(uvicorn.Server):
    """uvicorn's server, with the app told to drain on SIGTERM / SIGINT, a clean exit status after
    it, and one line on stdout once it listens: ``serving NAME[, NAME] on http://HOST:PORT``."""

    def __init__(self, config: uvicorn.Config, serving: Serving, announce=_say):
        super().__init__(config)
        self.serving, self.announce = serving, announce

    @contextlib.contextmanager
    def capture_signals(self):
        """SIGTERM and SIGINT handled on the event loop (so draining can wake it), and not raised again
        after the graceful shutdown (uvicorn's default would end the process by the signal)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        try:
            yield
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    def handle_exit(self, sig, frame) -> None:
        self.serving.drain()
        super().handle_exit(sig, frame)

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            where = f"[{host}]" if ":" in host else host
            self.announce(f"serving {', '.join(self.serving.models)} on http://{where}:{port}")


def build_server(models: list[ServedModel], *, host: str = "127.0.0.1", port: int = 8000,
                 limits: Limits | None = None, log_level: str = "warning", announce=_say) -> Server:
    """The uvicorn server of ``models`` (not started: ``.run()`` blocks until shut down)."""
    limits = limits or Limits()
    app = create_app(models, limits)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False, lifespan="on",
                            timeout_graceful_shutdown=limits.timeout_s + GRACE_S, server_header=False)
    return Server(config, app.state.serving, announce)


def serve(targets: list[str], *, host: str = "127.0.0.1", port: int = 8000, backend: str | None = None,
          threads: int | None = None, policy: BatchPolicy | None = None, limits: Limits | None = None,
          log_level: str = "warning", announce=_say) -> None:
    """Serve ``targets`` (``NAME=TARGET`` or ``TARGET``: ``models.load_models``) until SIGTERM or Ctrl+C.
    ``threads``: each runtime's threads (default: every usable core)."""
    if not 0 <= port <= 65535:
        raise UsageError(f"port must be in 0..65535 (0: any free port), got {port}")
    models = load_models(targets, backend=backend, threads=threads, policy=policy)
    for m in models:
        if m.session.fixed_batch and m.session.fixed_batch < m.policy.max_batch:
            print(f"note: {m.name} takes a fixed batch of {m.session.fixed_batch}: its batches run in pieces of "
                  f"that size (export with --batch-size dynamic to batch)", file=sys.stderr)
    if not is_loopback(host):
        print(f"note: listening on {host}, reachable from other machines; this server has no authentication",
              file=sys.stderr)
    server = build_server(models, host=host, port=port, limits=limits, log_level=log_level, announce=announce)
    try:
        server.run()
    except SystemExit:  # uvicorn exits when it cannot bind (after logging why)
        if server.started:
            raise
        raise UsageError(f"could not listen on {host}:{port} (in use, or not an address of this machine)") from None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
