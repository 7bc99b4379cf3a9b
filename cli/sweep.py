"""`cmkd-pipe kd-sweep`: argument parsing for stages/kd_sweep.py."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cmkd_pipe.cli.common import fail


def parse_grid(text: str, option: str) -> list[float]:
    """'1,2.5' -> [1.0, 2.5]; a clear error naming the option otherwise."""
    try:
        values = [float(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise ValueError(f"{option} {text!r}: expected comma-separated numbers, e.g. {option} 1,2.5") from None
    if not values:
        raise ValueError(f"{option}: give at least one value")
    return values


def kd_sweep(
    features: Annotated[Path, typer.Option(help="feature store (.zarr)")],
    logits: Annotated[Path, typer.Option(help="cached teacher logits of these features (teacher-logits output)")],
    out: Annotated[Path, typer.Option(help="sweep folder: one run folder per grid point, sweep.json, sweep.md")],
    model: Annotated[str, typer.Option("--model", help="student: cnn | ast | timm:NAME (any timm CNN)")] = "cnn",
    preset: Annotated[str, typer.Option(help="training preset: demo, esc50, fsd50k, audioset-balanced, "
                                             "audioset-full, smoke")] = "demo",
    taus: Annotated[str, typer.Option(help="comma-separated KD temperatures τ (> 0)")] = "1,2.5",
    lams: Annotated[str, typer.Option(help="comma-separated task-loss weights λ in [0, 1]")] = "0.3,0.5,0.7",
    set_: Annotated[list[str], typer.Option("--set", help="override a config value: KEY.SUB=VALUE "
                                                          "(repeatable)")] = [],
    weights: Annotated[Optional[Path], typer.Option(help="initial student weights (as for train)")] = None,
    new_head: Annotated[bool, typer.Option(help="replace a head with another class count")] = False,
    pretrained_from_hub: Annotated[bool, typer.Option(help="allow downloading ImageNet weights from timm's hub")]
    = False,
    device: Annotated[Optional[str], typer.Option(help="cpu | cuda (default: cuda when available)")] = None,
) -> None:
    """Grid over τ and λ: one KD student per point, selected by the validation split's metric (resumable)."""
    from cmkd_pipe.pipeline.stores.chunks import StoreError
    from cmkd_pipe.stages.kd_sweep import markdown_table, run_kd_sweep
    from cmkd_pipe.stages.train import train

    try:
        summary = run_kd_sweep(train, features, logits, model, out, preset=preset, taus=parse_grid(taus, "--taus"),
                               lams=parse_grid(lams, "--lams"), overrides=set_,
                               weights=str(weights) if weights else None, new_head=new_head,
                               allow_download=pretrained_from_hub, device=device)
    except (StoreError, ValueError, FileNotFoundError) as error:
        fail(error)
    typer.echo(markdown_table(summary), nl=False)
    typer.echo(f"sweep → {out / 'sweep.json'}")


def register(app: typer.Typer) -> None:
    """Add the kd-sweep command to the `cmkd-pipe` app."""
    app.command("kd-sweep")(kd_sweep)
