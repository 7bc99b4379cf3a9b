"""`cmkd-pipe report RUN_DIR [--out DIR]`: build the CMKD report and print its results table."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cmkd_pipe.cli.common import fail


def register(app: typer.Typer) -> None:
    """Add the `report` command to the `cmkd-pipe` app."""

    @app.command("report")
    def report(run_dir: Annotated[Path, typer.Argument(help="the --out folder of `cmkd-pipe cmkd` "
                                                            "(RUN_DIR/<group>/<run>/results.json)")],
               out: Annotated[Optional[Path], typer.Option(help="report folder (default: RUN_DIR/report)")] = None,
               ) -> None:
        """Compare baselines and KD students over all groups: report.md/.json and figures; prints the table."""
        from cmkd_pipe.stages.report import build_report, markdown_table

        try:
            built = build_report(run_dir, out)
        except ValueError as error:  # ReportError, or a malformed metrics.jsonl
            fail(error)
        typer.echo(markdown_table(built))
        for entry in built["missing"]:
            typer.echo(f"missing: {entry['group']}/{entry['run']} ({entry['reason']})")
        typer.echo(f"report → {out if out is not None else run_dir / 'report'}/report.md")
