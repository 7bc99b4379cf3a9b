"""`cmkd-pipe teacher-logits` and `cmkd-pipe inspect-logits`: argument parsing for stages/teacher_logits.py."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cmkd_pipe.cli.common import fail, print_json




def teacher_logits(
    checkpoint: Annotated[Path, typer.Option(help="teacher checkpoint (.pt) trained on these features")],
    out: Annotated[Path, typer.Option(help="logits store to write or resume (.zarr)")],
    features: Annotated[Optional[Path], typer.Option(help="complete feature store (.zarr); default: the one the "
                                                          "checkpoint was trained on")] = None,
    views: Annotated[int, typer.Option(help="views per clip: view 0 clean, the others SpecAugment + mixup")] = 1,
    view_seed: Annotated[int, typer.Option(help="seed of the deterministic views")] = 0,
    freq_mask: Annotated[int, typer.Option(help="max frequency mask width of a view (bins)")] = 48,
    time_mask: Annotated[int, typer.Option(help="max time mask width of a view (frames)")] = 192,
    mixup_rate: Annotated[float, typer.Option(help="share of views mixed with a partner of the same split")] = 0.5,
    mixup_alpha: Annotated[float, typer.Option(help="λ ~ Beta(alpha, alpha)")] = 10.0,
    time_shift: Annotated[int, typer.Option(help="max circular time shift of a view (frames)")] = 0,
    mask_fill: Annotated[str, typer.Option(help="masked cells: zero (raw 0, AST) | mean (the store mean)")] = "zero",
    mix_mode: Annotated[str, typer.Option(help="power | logmel (must match the student's augment.mixup_mode)")]
    = "power",
    chunk_clips: Annotated[Optional[int], typer.Option(help="clips per chunk = per task "
                                                            "(default: the feature store's)")] = None,
    batch_size: Annotated[int, typer.Option(help="clips per teacher forward pass")] = 32,
    scheduler: Annotated[Optional[str], typer.Option(help="Dask scheduler address (tcp://host:8786), or 'synchronous' "
                                                          "(every task in this process, for tiny corpora); "
                                                          "default: a LocalCluster on this machine")] = None,
    workers: Annotated[Optional[int], typer.Option(help="LocalCluster workers (default: number of cores; "
                                                        "on CUDA one per GPU)")] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu | cuda | cuda:N (default: cuda when available)")]
    = None,
    overwrite: Annotated[bool, typer.Option(help="delete an existing logits store at --out first")] = False,
) -> None:
    """Cache the teacher's raw logits for every clip and view of a feature store (resumable, Dask-parallel)."""
    from cmkd_pipe.cli import stage_runner
    from cmkd_pipe.pipeline.models.checkpoint import read_checkpoint
    from cmkd_pipe.pipeline.parallel import StageTasksFailed

    if features is None:
        recorded = read_checkpoint(checkpoint).get("extra", {}).get("feature_store")
        if not recorded:
            fail(ValueError(f"{checkpoint}: the checkpoint does not record its feature store; pass --features"))
        features = Path(recorded)
        typer.echo(f"features: {features} (recorded in {checkpoint})")

    params = {"views": {"n_views": views, "freq_mask": freq_mask, "time_mask": time_mask, "mixup_rate": mixup_rate,
                        "alpha": mixup_alpha, "seed": view_seed, "time_shift": time_shift,
                        "mask_fill": mask_fill}, "mix_mode": mix_mode, "chunk_clips": chunk_clips}
    try:
        summary = stage_runner.teacher_logits(
            params, {"features": str(features), "checkpoint": str(checkpoint), "out": str(out)},
            {"batch_size": batch_size, "scheduler": scheduler, "workers": workers, "device": device,
             "overwrite": overwrite})
    except (ValueError, StageTasksFailed) as error:  # StoreError is a ValueError
        fail(error)
    print_json(summary)


def inspect_logits(
    store: Annotated[Path, typer.Argument(help="logits store (.zarr)")],
    features: Annotated[Optional[Path], typer.Option(help="its feature store, if moved since "
                                                          "(default: the path recorded in the store)")] = None,
    png: Annotated[Optional[Path], typer.Option(help="write entropy/confidence histograms per split here")]
    = None,
) -> None:
    """Completeness, provenance and the teacher's metrics per split of a logits store."""
    from cmkd_pipe.stages.teacher_logits import inspect_logits as inspect

    try:
        summary = inspect(store, features, png)
    except ValueError as error:
        fail(error)
    print_json(summary)


def register(app: typer.Typer) -> None:
    """Add the teacher-logits and inspect-logits commands to the `cmkd-pipe` app."""
    app.command("teacher-logits")(teacher_logits)
    app.command("inspect-logits")(inspect_logits)
