"""`cmkd-pipe tag` and `cmkd-pipe export`: argument parsing for stages/tag.py and stages/export.py."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cmkd_pipe.cli.common import fail, print_json

MultiLabel = Annotated[Optional[bool], typer.Option("--multilabel/--single-label",
                                                    help="sigmoid or softmax scores (default: what the model "
                                                         "records)")]


def tag(
    paths: Annotated[list[Path], typer.Argument(help="audio files, folders (recursive) or manifest folders")],
    model: Annotated[Path, typer.Option(help="checkpoint (final.pt) or exported ONNX model (folder or .onnx)")],
    hop: Annotated[Optional[int], typer.Option(help="frames between window starts (default: half a window)")]
    = None,
    pool: Annotated[str, typer.Option(help="clip score over windows: mean | max")] = "mean",
    top_k: Annotated[int, typer.Option(help="labels shown per file and per window")] = 5,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="write all results as JSON here")] = None,
    csv_out: Annotated[Optional[Path], typer.Option("--csv", help="write path, rank, id, name, score here")] = None,
    timeline: Annotated[Optional[Path], typer.Option(help="write per-window scores (start/end s, top labels) "
                                                          "as CSV here")] = None,
    batch_size: Annotated[int, typer.Option(help="windows per forward pass")] = 16,
    device: Annotated[Optional[str], typer.Option(help="cpu | cuda (checkpoints; default: cuda when available)")]
    = None,
    multilabel: MultiLabel = None,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Tag audio of any length and sample rate: sliding windows, clip scores, top-k labels."""
    from cmkd_pipe.stages.tag import run_tag, table

    run = run_tag(paths, model, hop=hop, pool=pool, top_k=top_k, batch_size=batch_size, device=device,
                  multilabel=multilabel, json_out=json_out, csv_out=csv_out, timeline_out=timeline,
                  progress=progress)
    for line in table(run, top_k):
        typer.echo(line)
    for path, reason in run.failed:
        typer.secho(f"skipped {path}: {reason}", fg=typer.colors.YELLOW, err=True)
    typer.echo(run.summary(), err=True)
    if not run.tagged:
        fail(ValueError(f"no file could be tagged ({len(run.failed)} failed); see the reasons above"))


def export(
    checkpoint: Annotated[Path, typer.Argument(help="checkpoint to export (final.pt)")],
    out: Annotated[Path, typer.Option(help="folder to write (model, model_fbank, labels.csv, config.json)")],
    fmt: Annotated[str, typer.Option("--format", help="onnx | torchscript")] = "onnx",
    multilabel: MultiLabel = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing --out folder")] = False,
) -> None:
    """Export a model with its Kaldi front end (waveform -> logits) and a fbank -> logits variant."""
    from cmkd_pipe.stages.export import run_export

    print_json(run_export(checkpoint, out, fmt=fmt, multilabel=multilabel, overwrite=overwrite))


def register(app: typer.Typer) -> None:
    """Add the tag and export commands to the `cmkd-pipe` app."""
    app.command("tag")(tag)
    app.command("export")(export)
