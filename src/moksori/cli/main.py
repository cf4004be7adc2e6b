"""`moksori` command line. User mistakes are one line on stderr and a non-zero exit."""

from __future__ import annotations

import errno
import functools
import os
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer

from moksori import __version__
from moksori.cli.ui import err_console
from moksori.errors import MoksoriError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Moksori (목소리): a self-hosted real-time voice agent. Korean and English, offline by default.")
models_app = typer.Typer(no_args_is_help=True, help="Embedded models: list, prepare, verify.")
app.add_typer(models_app, name="models")

P = ParamSpec("P")
R = TypeVar("R")


def friendly(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn errors into one line and an exit code; tracebacks only with MOKSORI_DEBUG=1."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except MoksoriError as e:
            if os.environ.get("MOKSORI_DEBUG"):
                raise
            err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise typer.Exit(130) from None
        except OSError as e:
            if os.environ.get("MOKSORI_DEBUG"):
                raise
            if e.filename is None and e.errno in (errno.EPIPE, errno.ENOSPC, errno.EDQUOT, errno.EIO):
                # the output itself: `moksori models list > file` on a full disk, `| head` closed early
                # (every file Moksori writes names itself in its errors)
                _silence_stdout()
                err_console.print(f"[bold red]error:[/] cannot write the output: {e.strerror or e}",
                                  highlight=False, soft_wrap=True)
                raise typer.Exit(2) from None
            if e.filename is None:
                raise
            # a file the user named, or one in their data dir: unreadable, unwritable, disk full
            err_console.print(f"[bold red]error:[/] {e.strerror or e}: {e.filename}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except Exception as e:
            if os.environ.get("MOKSORI_DEBUG"):
                raise
            err_console.print(f"[bold red]internal error:[/] {type(e).__name__}: {e} "
                              "(set MOKSORI_DEBUG=1 for a traceback)", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


def _silence_stdout() -> None:
    """Point standard output at /dev/null once it failed, so that Python's own flush at exit
    does not print a second error."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


@app.callback(invoke_without_command=True)
def _root(version: bool = typer.Option(False, "--version", help="Print the version and exit.")) -> None:
    if version:
        typer.echo(__version__)
        raise typer.Exit(0)


def _register() -> None:
    from moksori.cli import (  # noqa: F401 - registering commands
        chat_cmd,
        converse_cmd,
        db_cmd,
        doctor_cmd,
        models_cmd,
        serve_cmd,
        speech_cmd,
        tools_cmd,
    )


def main(argv: list[str] | None = None) -> None:
    _register()
    try:
        app(args=argv, prog_name="moksori", standalone_mode=True)
    except SystemExit as e:
        sys.exit(e.code)
