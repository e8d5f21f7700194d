"""The ``mobilenets`` command: one verb per job, each a thin layer over a library function.

Verbs live in modules of this package, each with a ``register(app)`` function; what they share
(the app, the consoles, the one-line error guard) is in ``common``, their shared options
(``-o/--output``, ``--batch-size``, ``--device``, ``--json``) in ``options``.
"""
from __future__ import annotations

import sys

import typer

from ..core import hardware
from . import common, deploy, measure, serve, train, weights, zoo
from .common import app, console, describe, err_console, fail

__all__ = ["app", "console", "describe", "err_console", "fail", "main"]

for _verbs in (zoo, weights, train, deploy, measure, serve):
    _verbs.register(app)


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors.")):
    """MobileNets: choose, build, train, quantize, export and measure."""
    common.DEBUG = debug


def main() -> None:
    common.STARTUP_S = hardware.process_age_s()  # interpreter start-up and imports count against --max-seconds
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
