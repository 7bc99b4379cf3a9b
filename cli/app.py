"""The `cmkd-pipe` command line: parses arguments and calls a stage, nothing more."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from cmkd_pipe.cli.common import ErrorBoundary, fail, print_json
from cmkd_pipe.pipeline.stores.codecs import CODECS, DEFAULT_CODEC

app = typer.Typer(cls=ErrorBoundary, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="CNN/Transformer cross-model knowledge distillation for audio classification.")

Scheduler = Annotated[Optional[str], typer.Option(help="Dask scheduler address (tcp://host:8786), or 'synchronous' "
                                                       "(every task in this process, for tiny corpora); "
                                                       "default: a LocalCluster on this machine")]
Workers = Annotated[Optional[int], typer.Option(help="LocalCluster workers (default: number of cores)")]




@app.command("demo-data")
def demo_data(out_dir: Path,
              multilabel: Annotated[bool, typer.Option(help="mixtures of 1–3 events per clip")] = False,
              clips_per_class: int = 80, seed: int = 0) -> None:
    """Write the built-in synthetic demo corpus (wav files + manifest) to OUT_DIR."""
    from cmkd_pipe.data_manifests.demo import make_demo_corpus

    manifest = make_demo_corpus(out_dir, multilabel=multilabel, clips_per_class=clips_per_class, seed=seed)
    typer.echo(f"{len(manifest)} clips, {len(manifest.vocabulary)} classes → {out_dir / 'manifest'}")


@app.command("manifest")
def manifest(kind: Annotated[str, typer.Argument(help="esc50 | fsd50k | audioset | folder | csv | ast-json | demo")],
             root: Annotated[Path, typer.Argument(help="dataset root as downloaded (csv: the csv file)")],
             out: Annotated[Path, typer.Option(help="manifest folder to write")],
             option: Annotated[list[str], typer.Option("--option", "-o", help="builder option KEY=VALUE")] = []) -> None:
    """Build a validated manifest from a corpus in its published layout."""
    import yaml

    from cmkd_pipe.data_manifests.builders import build_manifest

    options = {}
    for item in option:
        key, _, value = item.partition("=")
        options[key.replace("-", "_")] = yaml.safe_load(value)
    built = build_manifest(kind, root, **options)
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
             codec: Annotated[str, typer.Option(help=f"fbank compression of a new store: {', '.join(CODECS)} "
                                                     "(docs/ARCHITECTURE.md)")] = DEFAULT_CODEC,
             overwrite: bool = False) -> None:
    """Compute the Kaldi fbank of every clip into a chunked Zarr store (resumable, Dask-parallel)."""
    from cmkd_pipe.cli import stage_runner
    from cmkd_pipe.pipeline.config import FeatureConfig

    config = FeatureConfig(sample_rate=sample_rate, num_mel_bins=num_mel_bins, frame_length_ms=frame_length_ms,
                           frame_shift_ms=frame_shift_ms, target_frames=target_frames)
    summary = stage_runner.features(
        {"features": config.to_dict(), "chunk_clips": chunk_clips, "max_bad_fraction": max_bad_fraction},
        {"manifest": str(manifest_dir), "out": str(out)},
        {"scheduler": scheduler, "workers": workers, "codec": codec, "overwrite": overwrite})
    print_json(summary)


Preset = Annotated[str, typer.Option(help="training preset: demo, esc50, fsd50k, audioset-balanced, audioset-full")]
Set = Annotated[list[str], typer.Option("--set", help="override a config value: KEY.SUB=VALUE (repeatable)")]
Model = Annotated[str, typer.Option("--model", help="a model family (cnn | ast | a plugin's) or timm:NAME (any timm CNN)")]


def _train_command(features: Path, model: str, out: Path, preset: str, overrides: list[str], resume: bool,
                   weights: Optional[Path], new_head: bool, pretrained_from_hub: bool, device: Optional[str],
                   logits: Optional[Path] = None, teacher: Optional[Path] = None, overwrite: bool = False) -> None:
    from cmkd_pipe.cli import stage_runner
    from cmkd_pipe.pipeline.training.presets import resolve_config

    teacher_io = {"teacher": str(logits or teacher)} if (logits or teacher) else {}
    results = stage_runner.train(
        {"family": model, "config": resolve_config(preset, overrides),
         "teacher": "logits" if logits else "checkpoint" if teacher else None},
        {"features": str(features), "out": str(out), **teacher_io},
        {"resume": resume, "overwrite": overwrite, "weights": str(weights) if weights else None, "new_head": new_head,
         "device": device, "pretrained_from_hub": pretrained_from_hub,
         "extra": {"preset": preset, "overrides": list(overrides)}})
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
              device: Annotated[Optional[str], typer.Option(help="cpu | cuda (default: cuda when available)")] = None,
              overwrite: Annotated[bool, typer.Option(help="start an existing run folder's run again")] = False) -> None:
    """Train a model (teacher or no-KD baseline) on a feature store. Under torchrun: DDP."""
    _train_command(features, model, out, preset, set_, resume, weights, new_head, pretrained_from_hub, device,
                   overwrite=overwrite)


@app.command("train-student")
def train_student_cmd(logits: Annotated[Optional[Path], typer.Option(help="cached teacher logits (stage one output)")] = None,
                      teacher: Annotated[Optional[Path], typer.Option(help="reference mode: online frozen teacher checkpoint")] = None,
                      features: Annotated[Optional[Path], typer.Option(help="feature store (default: the one the "
                                                                            "logits were computed on)")] = None,
                      out: Annotated[Optional[Path], typer.Option(help="run folder (default: student-MODEL-from-"
                                                                       "TEACHER beside the store)")] = None,
                      model: Annotated[Optional[str], typer.Option(help="cnn | ast | timm:NAME (default: the other "
                                                                        "family than the teacher's)")] = None,
                      preset: Annotated[Optional[str], typer.Option(help="training preset (default: the teacher's, "
                                                                         "with its overrides)")] = None,
                      set_: Set = [], resume: bool = False, weights: Optional[Path] = None, new_head: bool = False,
                      pretrained_from_hub: bool = False, device: Optional[str] = None,
                      overwrite: Annotated[bool, typer.Option(help="start an existing run folder's run again")] = False
                      ) -> None:
    """Train a student with the CMKD loss against cached teacher logits (or an online teacher).

    `cmkd-pipe train-student --logits store.zarr` is enough: the feature store, recipe and model family come
    from the store's provenance; every default is printed at the start and any flag overrides it."""
    from cmkd_pipe.pipeline.training.student_defaults import student_defaults

    if (logits is None) == (teacher is None):
        fail(ValueError("give exactly one of --logits STORE (cached teacher) or --teacher CKPT (online teacher)"))
    defaults = student_defaults(logits, teacher, features, preset)
    defaults.model = model or defaults.model
    defaults.overrides += list(set_)
    defaults.out = out or defaults.out.with_name(f"student-{defaults.model}-from-{defaults.teacher_family}")
    typer.echo(defaults.describe())
    _train_command(defaults.features, defaults.model, defaults.out, defaults.preset, defaults.overrides, resume,
                   weights, new_head, pretrained_from_hub, device, logits=logits, teacher=teacher, overwrite=overwrite)


@app.command("evaluate")
def evaluate_cmd(checkpoint: Annotated[Path, typer.Argument(help="model checkpoint (.pt)")],
                 features: Annotated[Path, typer.Option(help="feature store (.zarr)")],
                 split: Annotated[str, typer.Option(help="split spec: eval | val,eval | fold==1 | all")] = "all",
                 out: Annotated[Optional[Path], typer.Option(help="write the metrics JSON here")] = None,
                 device: Optional[str] = None) -> None:
    """Score a checkpoint on a split: accuracy; mAP, mAUC, d′ for multi-label data."""
    from cmkd_pipe.stages.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(checkpoint, features, split, device=device, out=out)
    result.pop("per_class_ap", None)
    print_json(result)


@app.command("cv")
def cv_cmd(features: Annotated[Path, typer.Option(help="feature store with folds")],
           out: Annotated[Path, typer.Option(help="folder for the fold runs")],
           model: Model = "cnn", preset: Preset = "esc50", set_: Set = [],
           folds: Annotated[str, typer.Option(help="comma-separated folds")] = "1,2,3,4,5",
           weights: Optional[Path] = None, new_head: bool = False, pretrained_from_hub: bool = False,
           device: Optional[str] = None) -> None:
    """K-fold cross-validation (ESC-50): one run per fold, mean ± sample std (ddof=1) of the metric."""
    from cmkd_pipe.stages.cv import run_cv
    from cmkd_pipe.stages.train import train

    summary = run_cv(train, features, model, out, folds=[int(f) for f in folds.split(",")], preset=preset,
                     overrides=set_, weights=str(weights) if weights else None, new_head=new_head,
                     allow_download=pretrained_from_hub, device=device)
    for name in ("last", "best", "wa", "ensemble"):
        if name in summary:
            std = summary[name]["std"]
            spread = "(one fold: no std)" if std is None else f"± {std:.4f}"
            typer.echo(f"{name:9s} {summary['metric']} {summary[name]['mean']:.4f} {spread}")
    typer.echo(f"(± is the {summary['std_kind']})")


@app.command("print-config")
def print_config(preset: Preset = "demo", set_: Set = [],
                 model: Annotated[Optional[str], typer.Option(help="show the values for one model family")] = None) -> None:
    """Print a preset with overrides applied (the exact config a run records)."""
    from cmkd_pipe.pipeline.config import dump_config
    from cmkd_pipe.pipeline.models.registry import family_of_arch
    from cmkd_pipe.pipeline.training.presets import resolve_config, select_family

    config = resolve_config(preset, set_)
    if model:
        config = select_family(config, family_of_arch(model).name)
    typer.echo(dump_config(config), nl=False)


Dataset = Annotated[str, typer.Option(help="demo, demo-multilabel, esc50, fsd50k, audioset-balanced, audioset-full")]


def _run_options(dataset: str, data_root: Optional[Path], run_dir: Optional[Path], set_: list[str],
                 scheduler: Optional[str] = None, workers: Optional[int] = None, nproc: int = 1,
                 device: Optional[str] = None, pretrained_from_hub: bool = False, folds: Optional[str] = None,
                 val_on_test: bool = False, jobs: int = 1, preset: Optional[str] = None,
                 teachers: Optional[list[str]] = None, teacher_labels: Optional[Path] = None,
                 allow_unmapped: bool = False):
    """The run's options; what is not given is taken from the run's run.json (what its last `run` used),
    so `status` or a rerun typed without DATA_ROOT, SET, PRESET or TEACHER means the same run
    (`--teacher none` drops the recorded published teachers)."""
    from cmkd_pipe.pipeline.records import read_json
    from cmkd_pipe.stages.graph import RunOptions, teacher_arguments

    run_dir = run_dir or Path("runs") / dataset
    recorded = read_json(run_dir / "run.json") or {}
    if recorded.get("dataset") not in (None, dataset):
        recorded = {}
    try:
        fold_list = [int(f) for f in folds.split(",") if f.strip()] if folds else recorded.get("folds")
    except ValueError:
        fail(ValueError(f"--folds {folds!r}: give fold numbers separated by commas, e.g. --folds 1,3"))
    root = data_root or Path(recorded.get("data_root") or Path("data") / dataset)
    teachers = list(teachers) if teachers else list(recorded.get("teachers") or [])
    if "none" in teachers:
        teachers, teacher_labels, allow_unmapped = [], None, False
    else:
        teachers = teacher_arguments(teachers)
        teacher_labels = Path(teacher_labels).resolve() if teacher_labels else recorded.get("teacher_labels")
        allow_unmapped = allow_unmapped or bool(recorded.get("allow_unmapped"))
    return RunOptions(dataset=dataset, run_dir=run_dir, data_root=root,
                      overrides=list(set_) if set_ else list(recorded.get("overrides") or []),
                      scheduler=scheduler, workers=workers, nproc=nproc, device=device,
                      pretrained_from_hub=pretrained_from_hub, folds=fold_list,
                      val_on_test=val_on_test or bool(recorded.get("val_on_test")), jobs=jobs,
                      preset=preset or recorded.get("preset"), teachers=teachers,
                      teacher_labels=str(teacher_labels) if teacher_labels else None, allow_unmapped=allow_unmapped)


RunPreset = Annotated[Optional[str], typer.Option(help="training preset, a name (cpu-small, esc50, …) or your own "
                                                       "YAML file; default: the dataset's")]
Folds = Annotated[Optional[str], typer.Option(help="test folds to run, e.g. 1,3 (default: the dataset's)")]
ValOnTest = Annotated[bool, typer.Option(help="the official ESC-50 recipe: choose the best epoch on the test fold "
                                              "(labelled in the report); default: validate on the next fold")]


HubOption = Annotated[bool, typer.Option(help="let training stages download ImageNet weights from timm's hub")]
Teacher = Annotated[list[str], typer.Option("--teacher", help="a published teacher, [FAMILY=]PATH (official AST, "
                                                              "Hugging Face AST folder, PSLA, cmkd-pipe checkpoint): "
                                                              "imported instead of training that family's teacher; "
                                                              "'none' drops a recorded one")]
TeacherLabels = Annotated[Optional[Path], typer.Option(help="labels CSV (index,mid,display_name) of a published "
                                                            "teacher whose files do not name its outputs")]
AllowUnmapped = Annotated[bool, typer.Option(help="accept corpus classes a published teacher has no label for")]


@app.command("run")
def run_cmd(dataset: Dataset = "demo", data_root: Annotated[Optional[Path], typer.Option(help="corpus as downloaded (default data/DATASET)")] = None,
            run_dir: Annotated[Optional[Path], typer.Option(help="run folder (default runs/DATASET)")] = None,
            until: Annotated[Optional[str], typer.Option(help="stop after this stage (name or kind, e.g. features, train, teacher-logits)")] = None,
            only: Annotated[Optional[str], typer.Option(help="run just this stage (name or kind)")] = None,
            set_: Set = [], scheduler: Scheduler = None, workers: Workers = None,
            nproc: Annotated[int, typer.Option(help="processes per training stage (torchrun DDP)")] = 1,
            device: Optional[str] = None, pretrained_from_hub: HubOption = False, folds: Folds = None,
            val_on_test: ValOnTest = False, preset: RunPreset = None,
            jobs: Annotated[int, typer.Option(help="stages run at the same time (each gets cores/jobs threads)")] = 1,
            clean: Annotated[bool, typer.Option(help="delete a rerun stage's previous outputs once it succeeds "
                                                     "(default: keep them in <stage>/previous/)")] = False,
            teacher: Teacher = [], teacher_labels: TeacherLabels = None, allow_unmapped: AllowUnmapped = False,
            warm_start: Annotated[bool, typer.Option(help="start each stage forked from a process that has torch and "
                                                          "the stage modules imported (~3 s less per stage); "
                                                          "--no-warm-start: a new interpreter each")] = True
            ) -> None:
    """Run the CMKD experiment of a dataset: only the stages not done (or stale), then print the report."""
    from cmkd_pipe.stages import graph

    options = _run_options(dataset, data_root, run_dir, set_, scheduler, workers, nproc, device,
                           pretrained_from_hub, folds, val_on_test, jobs, preset, teacher, teacher_labels,
                           allow_unmapped)
    options.clean, options.warm_start = clean, warm_start
    ran = graph.run(options, until=until, only=only, echo=typer.echo)
    if not ran:
        typer.echo("everything requested is up to date")
    report = options.run_dir / "report" / "report.md"
    if report.is_file() and not until and not only:
        typer.echo(report.read_text())
    elif until:
        _print_partial_report(options.run_dir)


def _print_partial_report(run_dir: Path) -> None:
    """The report of the runs that exist so far (after `run --until`), built aside, not recorded."""
    import tempfile

    from cmkd_pipe.stages.report import ReportError, build_report, markdown

    with tempfile.TemporaryDirectory() as out:
        try:
            typer.echo(markdown(build_report(run_dir, out)))
        except ReportError:
            pass  # no training run finished yet: nothing to report


app.command("cmkd", help="The whole CMKD experiment of a dataset (same as `run` without --until/--only).")(run_cmd)


@app.command("status")
def status_cmd(dataset: Dataset = "demo", data_root: Optional[Path] = None, run_dir: Optional[Path] = None,
               set_: Set = [], folds: Folds = None, val_on_test: ValOnTest = False, preset: RunPreset = None,
               teacher: Teacher = [], teacher_labels: TeacherLabels = None, allow_unmapped: AllowUnmapped = False
               ) -> None:
    """Table of stages: done / stale (why) / failed (last error, log) / not started, with chunk progress."""
    from cmkd_pipe.stages import graph

    options = _run_options(dataset, data_root, run_dir, set_, folds=folds, val_on_test=val_on_test, preset=preset,
                           teachers=teacher, teacher_labels=teacher_labels, allow_unmapped=allow_unmapped)
    rows = graph.status_rows(options)
    width = max(len(r["stage"]) for r in rows)
    for row in rows:
        typer.echo(f"{row['stage']:<{width}}  {row['status']:<11}  {row['progress']:<12}  {row['detail']}")


@app.command("plan")
def plan_cmd(out: Annotated[Path, typer.Option(help="Make include file to write")],
             dataset: Dataset = "demo", data_root: Optional[Path] = None, run_dir: Optional[Path] = None,
             set_: Set = [], scheduler: Scheduler = None, nproc: int = 1, pretrained_from_hub: HubOption = False,
             folds: Folds = None, val_on_test: ValOnTest = False, preset: RunPreset = None,
             teacher: Teacher = [], teacher_labels: TeacherLabels = None, allow_unmapped: AllowUnmapped = False,
             cli: Annotated[str, typer.Option(help="how Make calls the CLI")] = "cmkd-pipe") -> None:
    """Write Make rules whose targets are the stages' completion records (used by the Makefile)."""
    from cmkd_pipe.pipeline.records import write_text_atomic
    from cmkd_pipe.stages import graph

    options = _run_options(dataset, data_root, run_dir, set_, scheduler, None, nproc, None, pretrained_from_hub,
                           folds, val_on_test, preset=preset, teachers=teacher, teacher_labels=teacher_labels,
                           allow_unmapped=allow_unmapped)
    rules = graph.make_rules(options, cli)
    if not out.is_file() or out.read_text() != rules:
        write_text_atomic(out, rules)


@app.command("run-stage")
def run_stage_cmd(folder: Annotated[Path, typer.Argument(help="a stage folder holding the config.json the graph wrote")]
                  ) -> None:
    """Run one stage exactly as its config.json says (what `run` and Make execute)."""
    from cmkd_pipe.cli import stage_runner

    stage_runner.run_stage_dir(folder)


def _register_stage_commands() -> None:
    """Commands whose argument parsing lives beside their stage's CLI module."""
    from cmkd_pipe.cli import logits, report, sweep, tag, teachers

    logits.register(app)
    teachers.register(app)
    report.register(app)
    sweep.register(app)
    tag.register(app)


_register_stage_commands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
