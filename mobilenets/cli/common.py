"""What every verb module shares: the app, the consoles, and the one-line error guard.

Every exception that reaches a verb becomes one line on stderr, never a traceback: ``UsageError``
(bad input) and unreadable files exit 2, anything else exits 1 and says to rerun with ``--debug``.
"""
from __future__ import annotations

import functools
import sys

import typer
from rich.console import Console
from typer.core import TyperGroup

from ..core.errors import UsageError


class _OneLineErrors(TyperGroup):
    """The root command: click's own parameter errors (a value out of range, an unknown option, a
    missing argument) become one line and exit 2, like ours, instead of a usage box."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except typer.Abort:
            if not standalone_mode:
                raise
            err_console.print("interrupted")
            sys.exit(130)
        except typer.TyperException as exc:  # click's errors (typer's own copy of click)
            if not standalone_mode or not hasattr(exc, "format_message"):
                raise
            where = f"{exc.ctx.command_path}: " if getattr(exc, "ctx", None) is not None else ""
            err_console.print(f"[bold red]error:[/] {where}{' '.join(exc.format_message().split())} "
                              f"(see --help)", highlight=False, soft_wrap=True)
            sys.exit(getattr(exc, "exit_code", 2))
        if standalone_mode:
            sys.exit(rv if isinstance(rv, int) else 0)
        return rv


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


app = _App(cls=_OneLineErrors, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="MobileNets: choose, build, train, quantize, export and measure.")
# Piped output (files, CI logs, tests) gets full-width tables instead of rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True)


DEBUG = False  # --debug: let exceptions through with their traceback
STARTUP_S = 0.0  # seconds the process spent before the command ran; set by main(), 0 when invoked in-process


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
