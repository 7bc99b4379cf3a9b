"""Output helpers shared by every command: one red error line and exit code 1, JSON summaries."""
from __future__ import annotations

import json

import typer


def fail(error: Exception) -> None:
    typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=1)


def print_json(data: dict) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))
