"""The `cmkd-pipe` command line: parses arguments and calls a stage, nothing more."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="CNN/Transformer cross-model knowledge distillation for audio classification.")

Scheduler = Annotated[Optional[str], typer.Option(help="Dask scheduler address (tcp://host:8786); "
                                                       "default: a LocalCluster on this machine")]
Workers = Annotated[Optional[int], typer.Option(help="LocalCluster workers (default: number of cores)")]


def _fail(error: Exception) -> None:
    typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=1)


def _print_json(data: dict) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


@app.command("demo-data")
def demo_data(out_dir: Path,
              multilabel: Annotated[bool, typer.Option(help="mixtures of 1–3 events per clip")] = False,
              clips_per_class: int = 40, seed: int = 0) -> None:
    """Write the built-in synthetic demo corpus (wav files + manifest) to OUT_DIR."""
    from data_manifests.demo import make_demo_corpus

    manifest = make_demo_corpus(out_dir, multilabel=multilabel, clips_per_class=clips_per_class, seed=seed)
    typer.echo(f"{len(manifest)} clips, {len(manifest.vocabulary)} classes → {out_dir / 'manifest'}")


@app.command("manifest")
def manifest(kind: Annotated[str, typer.Argument(help="esc50 | fsd50k | audioset | folder | csv | ast-json")],
             root: Annotated[Path, typer.Argument(help="dataset root as downloaded (csv: the csv file)")],
             out: Annotated[Path, typer.Option(help="manifest folder to write")],
             option: Annotated[list[str], typer.Option("--option", "-o", help="builder option KEY=VALUE")] = []) -> None:
    """Build a validated manifest from a corpus in its published layout."""
    import yaml

    from data_manifests.builders import build_manifest
    from data_manifests.manifest import ManifestError

    options = {}
    for item in option:
        key, _, value = item.partition("=")
        options[key.replace("-", "_")] = yaml.safe_load(value)
    try:
        built = build_manifest(kind, root, **options)
    except (ManifestError, FileNotFoundError, ValueError) as error:
        _fail(error)
    built.save(out)
    typer.echo(f"{len(built)} clips, {len(built.vocabulary)} classes, "
               f"{'multi' if built.multilabel else 'single'}-label → {out}")


@app.command("features")
def features(manifest_dir: Annotated[Path, typer.Option("--manifest", help="manifest folder")],
             out: Annotated[Path, typer.Option(help="feature store path (.zarr)")],
             target_frames: Annotated[int, typer.Option(help="pad/trim to this many frames (ESC-50 512, FSD50K/AudioSet 1024)")] = 1024,
             num_mel_bins: int = 128, sample_rate: int = 16000,
             frame_length_ms: float = 25.0, frame_shift_ms: float = 10.0,
             chunk_clips: Annotated[int, typer.Option(help="clips per Zarr chunk = per task")] = 64,
             scheduler: Scheduler = None, workers: Workers = None,
             max_bad_fraction: Annotated[float, typer.Option(help="fail when more clips than this are unusable")] = 0.05,
             overwrite: bool = False) -> None:
    """Compute the Kaldi fbank of every clip into a chunked Zarr store (resumable, Dask-parallel)."""
    from pipeline.config import FeatureConfig
    from pipeline.parallel import StageTasksFailed
    from pipeline.stores.chunks import StoreError
    from stages.features import TooManyBadClips, run_features
    from data_manifests.manifest import ManifestError

    config = FeatureConfig(sample_rate=sample_rate, num_mel_bins=num_mel_bins, frame_length_ms=frame_length_ms,
                           frame_shift_ms=frame_shift_ms, target_frames=target_frames)
    try:
        summary = run_features(manifest_dir, out, config=config, chunk_clips=chunk_clips, scheduler=scheduler,
                               n_workers=workers, max_bad_fraction=max_bad_fraction, overwrite=overwrite)
    except (StoreError, ManifestError, TooManyBadClips, StageTasksFailed) as error:
        _fail(error)
    _print_json(summary)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
