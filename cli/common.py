"""Output helpers shared by every command, and the one error boundary of the CLI.

Every error a command raises ends as one red line `error: …` on stderr and exit code 1: the project's
own errors (ValueError and its kin: bad settings, bad stores, bad manifests) say what to do themselves;
OS errors are named by file and cause (disk full, read-only, exists, permission). With CMKD_PIPE_TRACEBACK=1
(set by the stage graph, so a stage's log.txt keeps it for debugging) the traceback is printed first;
the error line is always the last line.
"""
from __future__ import annotations

import errno
import json
import os
import sys
import traceback

import click
import typer
from typer.core import TyperGroup

OS_HINTS = {
    errno.ENOSPC: "no space left on the device; free some space or choose another --out, then rerun (finished "
                  "work is kept)",
    errno.EROFS: "the file system is read-only; choose a writable --out",
    errno.EACCES: "permission denied; choose a folder you can write to",
    errno.EPERM: "operation not permitted; choose a folder you can write to",
    errno.EEXIST: "already exists; remove it or choose another --out",
    errno.ENOENT: "no such file or folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another path",
    errno.EISDIR: "is a folder, not a file",
    errno.ENOMEM: "out of memory; use a smaller batch size or fewer workers",
}


def error_line(error: BaseException) -> str:
    """One line that says what went wrong, where, and (for OS errors) what to do."""
    if isinstance(error, OSError) and error.errno in OS_HINTS:
        where = error.filename or ""
        return f"{where}: {OS_HINTS[error.errno]}" if where else OS_HINTS[error.errno]
    if isinstance(error, MemoryError):
        return OS_HINTS[errno.ENOMEM]
    text = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, (ValueError, OSError, RuntimeError, KeyError, LookupError)):
        return text
    return f"{type(error).__name__}: {text}"


def fail(error: BaseException) -> None:
    if os.environ.get("CMKD_PIPE_TRACEBACK") and error.__traceback__ is not None:
        traceback.print_exception(error, file=sys.stderr)
    typer.secho(f"error: {error_line(error)}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=1)


class ErrorBoundary(TyperGroup):
    """The command group of `cmkd-pipe`: any exception a command raises becomes `fail(error)`."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as error:  # the one place where errors become messages
            fail(error)


def print_json(data: dict) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))
