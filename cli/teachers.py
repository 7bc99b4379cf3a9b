"""`cmkd-pipe import-teacher`: argument parsing for stages/import_teacher.py."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cmkd_pipe.cli.common import print_json


def import_teacher(
    weights: Annotated[Path, typer.Argument(help="published checkpoint: official AST .pth, Hugging Face AST folder, "
                                                 "PSLA .pth, or a cmkd-pipe checkpoint")],
    features: Annotated[Path, typer.Option(help="the feature store the teacher will score (.zarr)")],
    out: Annotated[Path, typer.Option(help="teacher checkpoint to write (.pt)")],
    model: Annotated[Optional[str], typer.Option("--model", help="the family the weights must be (ast | cnn); "
                                                                 "default: read off the weights")] = None,
    set_: Annotated[list[str], typer.Option("--set", help="model.<family>.<option>=VALUE for what the file does "
                                                          "not tell (e.g. model.ast.num_heads=12); "
                                                          "norm.source=store to use the store's statistics")] = [],
    labels: Annotated[Optional[Path], typer.Option(help="CSV index,mid,display_name naming the outputs "
                                                        "(AudioSet's class_labels_indices.csv)")] = None,
    allow_unmapped: Annotated[bool, typer.Option(help="accept corpus classes the teacher has no label for "
                                                      "(distilled on the mapped classes only)")] = False,
    preset: Annotated[Optional[str], typer.Option(help="training preset recorded for `train-student`'s "
                                                       "defaults (e.g. fsd50k)")] = None,
) -> None:
    """Turn a published model into a teacher checkpoint for a feature store, without training.

    Its labels are mapped onto the corpus's by AudioSet mid (display names when it has no mids); corpus
    classes without a teacher label are listed and refused unless --allow-unmapped."""
    from cmkd_pipe.cli import stage_runner

    summary = stage_runner.import_teacher(
        {"family": model, "overrides": list(set_), "allow_unmapped": allow_unmapped, "preset": preset},
        {"weights": str(weights), "features": str(features), "out": str(out),
         **({"labels": str(labels)} if labels else {})}, {})
    print_json(summary)


def register(app: typer.Typer) -> None:
    """Add the import-teacher command to the `cmkd-pipe` app."""
    app.command("import-teacher")(import_teacher)
