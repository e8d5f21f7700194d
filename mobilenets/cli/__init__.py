"""The ``mobilenets`` command: one verb per job, each a thin layer over a library function.

Verbs live in modules of this package, each with a ``register(app)`` function; their shared
options (``-o/--output``, ``--batch-size``, ``--device``, ``--json``) are declared once in
``options``. Every exception becomes one line on stderr, never a traceback: ``UsageError`` (bad
input) and unreadable files exit 2, anything else exits 1 and says to rerun with ``--debug``,
which shows the traceback.
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
                except (typer.Exit, typer.Abort, KeyboardInterrupt, SystemExit):
                    raise
                except Exception as exc:
                    if DEBUG:
                        raise
                    fail(*describe(exc))
            register(guarded)
            return fn
        return decorator


app = _App(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="MobileNets: choose, build, train, quantize, export and measure.")
# Piped output (files, CI logs, tests) gets full-width tables instead of rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True)


DEBUG = False  # --debug: let exceptions through with their traceback


def describe(exc: BaseException) -> tuple[str, int]:
    """(one line, exit code) for an exception that reached a verb."""
    if isinstance(exc, UsageError):
        return str(exc), 2
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)):
        what = {FileNotFoundError: "no such file", IsADirectoryError: "is a folder, not a file",
                NotADirectoryError: "not a folder", PermissionError: "permission denied"}[type(exc)]
        return f"{what}: {exc.filename or exc}", 2
    text = " ".join(str(exc).split()) or type(exc).__name__
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(exc).__name__}: {text} (rerun with --debug for the traceback)", 1


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


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors.")):
    """MobileNets: choose, build, train, quantize, export and measure."""
    global DEBUG
    DEBUG = debug


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
