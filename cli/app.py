"""The `cmkd-pipe` command line: parses arguments and calls a stage, nothing more."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from cli.common import fail, print_json

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="CNN/Transformer cross-model knowledge distillation for audio classification.")

Scheduler = Annotated[Optional[str], typer.Option(help="Dask scheduler address (tcp://host:8786); "
                                                       "default: a LocalCluster on this machine")]
Workers = Annotated[Optional[int], typer.Option(help="LocalCluster workers (default: number of cores)")]




@app.command("demo-data")
def demo_data(out_dir: Path,
              multilabel: Annotated[bool, typer.Option(help="mixtures of 1–3 events per clip")] = False,
              clips_per_class: int = 80, seed: int = 0) -> None:
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
        if kind == "demo":
            from data_manifests.demo import make_demo_corpus
            from data_manifests.manifest import Manifest

            existing = root / "manifest"
            built = (Manifest.load(existing) if (existing / "manifest.json").is_file()
                     else make_demo_corpus(root, **options))
        else:
            built = build_manifest(kind, root, **options)
    except (ManifestError, FileNotFoundError, ValueError) as error:
        fail(error)
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
        fail(error)
    print_json(summary)


Preset = Annotated[str, typer.Option(help="training preset: demo, esc50, fsd50k, audioset-balanced, audioset-full")]
Set = Annotated[list[str], typer.Option("--set", help="override a config value: KEY.SUB=VALUE (repeatable)")]
Model = Annotated[str, typer.Option("--model", help="cnn | ast | timm:NAME (any timm CNN)")]


def _train_command(features: Path, model: str, out: Path, preset: str, overrides: list[str], resume: bool,
                   weights: Optional[Path], new_head: bool, pretrained_from_hub: bool, device: Optional[str],
                   logits: Optional[Path] = None, teacher: Optional[Path] = None) -> None:
    from pipeline.stores.chunks import StoreError
    from stages.train import train

    try:
        results = train(features, model, out, preset=preset, overrides=overrides, resume=resume,
                        weights=str(weights) if weights else None, new_head=new_head,
                        logits=str(logits) if logits else None, teacher=str(teacher) if teacher else None,
                        device=device, allow_download=pretrained_from_hub)
    except (StoreError, ValueError, FileNotFoundError) as error:
        fail(error)
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under torchrun, rank 0 reports
    metric = results["metric"]
    lines = {name: results[name][metric] for name in ("last", "best", "wa", "ensemble") if name in results}
    typer.echo(f"{model} on {features}: test {metric} " + ", ".join(f"{k} {v:.4f}" for k, v in lines.items()
                                                                    if v is not None))
    typer.echo(f"run folder: {out} (final.pt = {results['final']} model)")


@app.command("train")
def train_cmd(features: Annotated[Path, typer.Option(help="feature store (.zarr)")],
              out: Annotated[Path, typer.Option(help="run folder")],
              model: Model = "cnn", preset: Preset = "demo", set_: Set = [],
              resume: Annotated[bool, typer.Option(help="continue from OUT/checkpoints/last.pt")] = False,
              weights: Annotated[Optional[Path], typer.Option(help="initial weights: timm ImageNet state dict, "
                                                                   "official AST checkpoint, HF AST folder, PSLA checkpoint")] = None,
              new_head: Annotated[bool, typer.Option(help="replace a head with another class count")] = False,
              pretrained_from_hub: Annotated[bool, typer.Option(help="allow downloading ImageNet weights from timm's hub")] = False,
              device: Annotated[Optional[str], typer.Option(help="cpu | cuda (default: cuda when available)")] = None) -> None:
    """Train a model (teacher or no-KD baseline) on a feature store. Under torchrun: DDP."""
    _train_command(features, model, out, preset, set_, resume, weights, new_head, pretrained_from_hub, device)


@app.command("train-student")
def train_student_cmd(features: Annotated[Path, typer.Option(help="feature store (.zarr)")],
                      out: Annotated[Path, typer.Option(help="run folder")],
                      logits: Annotated[Optional[Path], typer.Option(help="cached teacher logits (stage one output)")] = None,
                      teacher: Annotated[Optional[Path], typer.Option(help="reference mode: online frozen teacher checkpoint")] = None,
                      model: Model = "cnn", preset: Preset = "demo", set_: Set = [],
                      resume: bool = False, weights: Optional[Path] = None, new_head: bool = False,
                      pretrained_from_hub: bool = False, device: Optional[str] = None) -> None:
    """Train a student with the CMKD loss against cached teacher logits (or an online teacher)."""
    if (logits is None) == (teacher is None):
        fail(ValueError("give exactly one of --logits STORE (cached teacher) or --teacher CKPT (online teacher)"))
    _train_command(features, model, out, preset, set_, resume, weights, new_head, pretrained_from_hub, device,
                   logits=logits, teacher=teacher)


@app.command("evaluate")
def evaluate_cmd(checkpoint: Annotated[Path, typer.Argument(help="model checkpoint (.pt)")],
                 features: Annotated[Path, typer.Option(help="feature store (.zarr)")],
                 split: Annotated[str, typer.Option(help="split spec: eval | val,eval | fold==1 | all")] = "all",
                 out: Annotated[Optional[Path], typer.Option(help="write the metrics JSON here")] = None,
                 device: Optional[str] = None) -> None:
    """Score a checkpoint on a split: accuracy; mAP, mAUC, d′ for multi-label data."""
    from pipeline.stores.chunks import StoreError
    from stages.evaluate import evaluate_checkpoint

    try:
        result = evaluate_checkpoint(checkpoint, features, split, device=device, out=out)
    except (StoreError, ValueError, FileNotFoundError) as error:
        fail(error)
    result.pop("per_class_ap", None)
    print_json(result)


@app.command("cv")
def cv_cmd(features: Annotated[Path, typer.Option(help="feature store with folds")],
           out: Annotated[Path, typer.Option(help="folder for the fold runs")],
           model: Model = "cnn", preset: Preset = "esc50", set_: Set = [],
           folds: Annotated[str, typer.Option(help="comma-separated folds")] = "1,2,3,4,5",
           weights: Optional[Path] = None, new_head: bool = False, pretrained_from_hub: bool = False,
           device: Optional[str] = None) -> None:
    """K-fold cross-validation (ESC-50): one run per fold, mean ± std of the metric."""
    from pipeline.stores.chunks import StoreError
    from stages.cv import run_cv

    try:
        summary = run_cv(features, model, out, folds=[int(f) for f in folds.split(",")], preset=preset,
                         overrides=set_, weights=str(weights) if weights else None, new_head=new_head,
                         allow_download=pretrained_from_hub, device=device)
    except (StoreError, ValueError, FileNotFoundError) as error:
        fail(error)
    for name in ("last", "best", "wa", "ensemble"):
        if name in summary:
            typer.echo(f"{name:9s} {summary['metric']} {summary[name]['mean']:.4f} ± {summary[name]['std']:.4f}")


@app.command("print-config")
def print_config(preset: Preset = "demo", set_: Set = [],
                 model: Annotated[Optional[str], typer.Option(help="show the values for one model family")] = None) -> None:
    """Print a preset with overrides applied (the exact config a run records)."""
    from pipeline.config import dump_config
    from pipeline.training.engine import family
    from pipeline.training.presets import resolve_config, select_arch

    try:
        config = resolve_config(preset, set_)
        if model:
            config = select_arch(config, family(model))
    except ValueError as error:
        fail(error)
    typer.echo(dump_config(config), nl=False)


Dataset = Annotated[str, typer.Option(help="demo, demo-multilabel, esc50, fsd50k, audioset-balanced, audioset-full")]


def _run_options(dataset: str, data_root: Optional[Path], run_dir: Optional[Path], set_: list[str],
                 scheduler: Optional[str], workers: Optional[int], nproc: int, device: Optional[str],
                 pretrained_from_hub: bool = False):
    from stages.graph import RunOptions

    return RunOptions(dataset=dataset, run_dir=run_dir or Path("runs") / dataset,
                      data_root=data_root or Path("data") / dataset, overrides=set_, scheduler=scheduler,
                      workers=workers, nproc=nproc, device=device, pretrained_from_hub=pretrained_from_hub)


HubOption = Annotated[bool, typer.Option(help="let training stages download ImageNet weights from timm's hub")]


@app.command("run")
def run_cmd(dataset: Dataset = "demo", data_root: Annotated[Optional[Path], typer.Option(help="corpus as downloaded (default data/DATASET)")] = None,
            run_dir: Annotated[Optional[Path], typer.Option(help="run folder (default runs/DATASET)")] = None,
            until: Annotated[Optional[str], typer.Option(help="stop after this stage (name or kind, e.g. features, train, teacher-logits)")] = None,
            only: Annotated[Optional[str], typer.Option(help="run just this stage (name or kind)")] = None,
            set_: Set = [], scheduler: Scheduler = None, workers: Workers = None,
            nproc: Annotated[int, typer.Option(help="processes per training stage (torchrun DDP)")] = 1,
            device: Optional[str] = None, pretrained_from_hub: HubOption = False) -> None:
    """Run the CMKD experiment of a dataset: only the stages not done (or stale), then print the report."""
    from stages import graph

    options = _run_options(dataset, data_root, run_dir, set_, scheduler, workers, nproc, device,
                           pretrained_from_hub)
    try:
        ran = graph.run(options, until=until, only=only, echo=typer.echo)
    except (graph.StageFailed, ValueError) as error:
        fail(error)
    if not ran:
        typer.echo("everything requested is up to date")
    report = options.run_dir / "report" / "report.md"
    if report.is_file() and not until and not only:
        typer.echo(report.read_text())


app.command("cmkd", help="The whole CMKD experiment of a dataset (same as `run` without --until/--only).")(run_cmd)


@app.command("status")
def status_cmd(dataset: Dataset = "demo", data_root: Optional[Path] = None, run_dir: Optional[Path] = None,
               set_: Set = []) -> None:
    """Table of stages: done / stale (why) / failed (last error, log) / not started, with chunk progress."""
    from stages import graph

    options = _run_options(dataset, data_root, run_dir, set_, None, None, 1, None)
    rows = graph.status_rows(options)
    width = max(len(r["stage"]) for r in rows)
    for row in rows:
        typer.echo(f"{row['stage']:<{width}}  {row['status']:<11}  {row['progress']:<12}  {row['detail']}")


@app.command("plan")
def plan_cmd(out: Annotated[Path, typer.Option(help="Make include file to write")],
             dataset: Dataset = "demo", data_root: Optional[Path] = None, run_dir: Optional[Path] = None,
             set_: Set = [], scheduler: Scheduler = None, nproc: int = 1, pretrained_from_hub: HubOption = False,
             cli: Annotated[str, typer.Option(help="how Make calls the CLI")] = "cmkd-pipe") -> None:
    """Write Make rules whose targets are the stages' completion records (used by the Makefile)."""
    from pipeline.records import write_text_atomic
    from stages import graph

    options = _run_options(dataset, data_root, run_dir, set_, scheduler, None, nproc, None, pretrained_from_hub)
    rules = graph.make_rules(options, cli)
    if not out.is_file() or out.read_text() != rules:
        write_text_atomic(out, rules)


def _register_stage_commands() -> None:
    """Commands whose argument parsing lives beside their stage's CLI module."""
    from cli import logits, report, sweep

    logits.register(app)
    report.register(app)
    sweep.register(app)


_register_stage_commands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
