"""The ``mobilenets`` command: one verb per job, each a thin layer over a library function.

Verbs live in modules of this package, each with a ``register(app)`` function.
``UsageError`` (bad input) becomes one line on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import functools
import sys

import typer
from rich.console import Console

from ..core.errors import UsageError


class _App(typer.Typer):
    """A Typer app whose commands turn user errors into one line and exit code 2."""

    def command(self, *args, **kwargs):
        register = super().command(*args, **kwargs)

        def decorator(fn):
            @functools.wraps(fn)
            def guarded(*a, **kw):
                try:
                    return fn(*a, **kw)
                except UsageError as exc:
                    fail(str(exc))
                except FileNotFoundError as exc:
                    fail(f"no such file: {exc.filename or exc}")
            register(guarded)
            return fn
        return decorator


app = _App(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="MobileNets: choose, build, train, quantize, export and measure.")
# Piped output (files, CI logs, tests) gets full-width tables instead of rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> None:
    """Print a one-line error and exit (2: bad input)."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _register_all() -> None:
    from . import zoo
    for module in (zoo,):
        module.register(app)
    for extra in ("weights", "train", "deploy", "measure"):  # verbs of optional parts, when present
        try:
            module = __import__(f"{__name__}.{extra}", fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{extra}":
                raise
            continue
        module.register(app)


_register_all()


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
