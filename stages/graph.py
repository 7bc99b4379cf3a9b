"""The CMKD stage graph of a dataset: plan, run only what is missing or stale, report status.

Layout under RUN_DIR (one folder per stage, each with config.json, log.txt, and stage.json on success):
  manifest/  features/  [import-<family>/]  <group>/train-<family>/  <group>/logits-<family>/
  <group>/student-<student>-from-<teacher>[-online|-<kd form>]/  report/
A group is one test fold (`fold-K`, validated on the next fold) or `main` for a fixed train/val/test split.
A published teacher (`--teacher [FAMILY=]PATH`, Make's TEACHER) replaces its family's trained teachers:
one `import-<family>` stage (`cmkd-pipe import-teacher`) makes the checkpoint every group's
`logits-<family>` (and online student) uses, and no `train-<family>` stage is planned.

Every stage's settings are resolved here once and written to its `config.json`: `params` (everything that
determines the result: its fingerprint), `runtime` (scheduler, workers, device, the feature store's
codec: never part of the identity) and `io` (input and output paths). `cmkd-pipe run-stage DIR` runs a
stage from that file alone, so `cmkd-pipe run`, Make and the stage commands share one way in (cli/stage_runner.py).

A stage is *done* when stage.json exists and its fingerprint equals the hash of its identity and its
inputs' identities (each input's fingerprint and the id of the run that made it, so a rerun of an
input reruns its dependents, as Make does); *stale* when the record exists but differs; *failed* when
failed.json is newer than any record.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from cmkd_pipe.data_manifests.digest import audio_digest, index_files
from cmkd_pipe.pipeline import warm_process
from cmkd_pipe.pipeline.config import FeatureConfig
from cmkd_pipe.pipeline.datasets import DatasetProfile, fold_overrides, get_profile, next_fold
from cmkd_pipe.pipeline.models.registry import configured_families
from cmkd_pipe.pipeline.records import (FAILURE_NAME, read_failure, read_json, read_record, stage_fingerprint,
                              write_failure, write_json_atomic, write_record)
from cmkd_pipe.pipeline.training.presets import resolve_config, select_family
from cmkd_pipe.pipeline.training.schema import RUNTIME_KEYS

CONFIG_NAME = "config.json"
PREVIOUS = "previous"  # a stale stage's last outputs, kept until its next rerun
KINDS = ("manifest", "features", "import-teacher", "train", "teacher-logits", "train-student", "report")
CHUNKED = ("features", "teacher-logits")  # the stages that run chunk tasks on Dask
# What a warm-started stage finds imported (RunOptions.warm_start): the ~3 s every stage would spend on them.
# Not cmkd_pipe.cli.app: a stage runs it afresh as __main__ (warm_process drops an imported copy first).
WARM_PRELOAD = ["torch", "timm", "zarr", "pandas", "typer", "matplotlib.figure", "matplotlib.backends.backend_agg",
                "cmkd_pipe.cli.common", "cmkd_pipe.cli.stage_runner", "cmkd_pipe.stages.train",
                "cmkd_pipe.stages.teacher_logits", "cmkd_pipe.stages.evaluate", "cmkd_pipe.stages.report"]
SCHEDULER_VARIABLE = "CMKD_PIPE_SCHEDULER"  # a shared cluster's address for the stage processes of one run
RUNTIME_TRAIN_KEYS = RUNTIME_KEYS  # training settings that cannot change a result: never part of an identity


@dataclass
class Stage:
    name: str  # folder relative to the run dir, e.g. "fold-1/train-cnn"
    kind: str  # manifest | features | train | teacher-logits | train-student | report
    deps: list[str]
    params: dict[str, Any]  # what the stage function receives and what determines its result
    io: dict[str, str] = field(default_factory=dict)  # input and output paths
    runtime: dict[str, Any] = field(default_factory=dict)  # how it runs (never part of the identity)
    outputs: list[str] = field(default_factory=list)
    labels: dict[str, Any] = field(default_factory=dict)  # for the report: group, model, teacher, teaching
    unread: tuple[tuple[str, ...], ...] = ()  # params paths the stage never reads (left out of the identity)
    distributed: bool = False  # a training stage that torchrun may launch

    def identity(self) -> dict[str, Any]:
        """The params that determine the result (without the paths in `unread`)."""
        identity = copy.deepcopy(self.params)
        for path in self.unread:
            node = identity
            for key in path[:-1]:
                node = node.get(key, {})
            node.pop(path[-1], None)
        return identity


@dataclass
class RunOptions:
    dataset: str
    run_dir: Path
    data_root: Path
    overrides: list[str] = field(default_factory=list)
    scheduler: str | None = None
    workers: int | None = None
    nproc: int = 1
    device: str | None = None
    pretrained_from_hub: bool = False  # let training stages fetch ImageNet weights (only when asked)
    folds: list[int] | None = None  # test folds to run (default: the profile's)
    val_on_test: bool = False  # the official ESC-50 recipe: validate (choose the best epoch) on the test fold
    jobs: int = 1  # stages run at the same time by `run`
    preset: str | None = None  # training preset (name or YAML file) instead of the dataset's default
    clean: bool = False  # delete a rerun stage's previous outputs once it succeeds (default: keep one generation)
    teachers: list[str] = field(default_factory=list)  # published teachers, "PATH" or "FAMILY=PATH" (import-teacher)
    teacher_labels: str | None = None  # labels CSV of a published teacher whose files do not name its outputs
    allow_unmapped: bool = False  # accept corpus classes a published teacher has no label for
    warm_start: bool = True  # start stages forked from a process with torch & co. imported (pipeline/warm_process.py)


def groups(profile: DatasetProfile, folds: list[int] | None = None,
           val_on_test: bool = False) -> list[tuple[str, list[str]]]:
    """(group name, data overrides) for every selected test fold of the profile, or the single `main` group."""
    if not profile.folds:
        return [("main", [])]
    chosen = list(profile.folds) if folds is None else list(folds)
    unknown = [k for k in chosen if not 1 <= k <= profile.n_folds]
    if unknown:
        raise ValueError(f"--folds {','.join(map(str, chosen))}: {profile.name} has folds 1..{profile.n_folds}")
    return [(f"fold-{k}", fold_overrides(k, None if val_on_test else next_fold(k, profile.n_folds)))
            for k in chosen]


def feature_config(profile: DatasetProfile, preset: dict[str, Any]) -> FeatureConfig:
    """The profile's front-end with the preset's non-null `features.*` settings on top (all but `codec`,
    which is how the store is written, not what it holds: a runtime setting of the features stage)."""
    settings = {**profile.features.to_dict(),
                **{k: v for k, v in preset.get("features", {}).items() if v is not None and k != "codec"}}
    return FeatureConfig.from_dict(settings)


def split_teacher(item: str) -> tuple[str | None, Path]:
    """(family or None, absolute weights path) of a `--teacher [FAMILY=]PATH` value."""
    family, sep, path = item.partition("=")
    if not sep or not family or "/" in family:
        family, path = "", item
    return family or None, Path(path).expanduser().resolve()


def teacher_arguments(items: list[str]) -> list[str]:
    """`--teacher` values with absolute paths, so a rerun from another folder (or Make) means the same."""
    return [f"{family}={path}" if family else str(path) for family, path in map(split_teacher, items)]


def imported_teachers(options: RunOptions, families: list[str]) -> dict[str, Path]:
    """{family: weights path} of the published teachers, each family read off its weights (without torch)
    unless given as FAMILY=PATH."""
    from cmkd_pipe.pipeline.models.registry import family_of_arch
    from cmkd_pipe.pipeline.models.weight_formats import family_of_weights

    out: dict[str, Path] = {}
    for item in options.teachers:
        family, weights = split_teacher(item)
        family = family_of_arch(family).name if family else family_of_weights(weights)
        if family not in families:
            raise ValueError(f"--teacher {item}: a {family} model, but the recipe's families are {', '.join(families)}")
        if family in out:
            raise ValueError(f"--teacher {item}: a second {family} teacher ({out[family]}); give one per family")
        out[family] = weights
    return out


def _import_stage(family: str, weights: Path, options: RunOptions, store: str, preset: str,
                  settings: list[str]) -> Stage:
    """`import-<family>`: the published weights made a teacher checkpoint for the feature store. The preset
    and its overrides are recorded in the checkpoint for `train-student`'s defaults, not part of its identity."""
    name = f"import-{family}"
    labels = str(Path(options.teacher_labels).expanduser().resolve()) if options.teacher_labels else None
    params = {"family": family, "weights": str(weights), "labels": labels, "allow_unmapped": options.allow_unmapped,
              "overrides": [], "preset": preset, "preset_overrides": settings}
    io = {"weights": str(weights), "features": store, "out": str(options.run_dir / name / "teacher.pt"),
          **({"labels": labels} if labels else {})}
    return Stage(name, "import-teacher", ["features"], params, io=io, outputs=[f"{name}/teacher.pt"],
                 unread=(("preset",), ("preset_overrides",)))


def plan(options: RunOptions) -> list[Stage]:
    """Every stage of the CMKD experiment for the dataset, in a valid execution order."""
    profile = get_profile(options.dataset)
    run = options.run_dir
    preset_name = options.preset or profile.preset
    settings = [*profile.overrides, *options.overrides]
    preset = resolve_config(preset_name, settings)
    dask = {"scheduler": options.scheduler, "workers": options.workers}
    device = {"device": options.device}
    manifest_dir, store = str(run / "manifest" / "manifest"), str(run / "features" / "features.zarr")
    stages = [
        Stage("manifest", "manifest", [], {"builder": profile.builder, "data_root": str(options.data_root.resolve()),
                                           "options": profile.builder_options},
              io={"out": manifest_dir}, outputs=["manifest/manifest"]),
        Stage("features", "features", ["manifest"],
              {"features": feature_config(profile, preset).to_dict(), "chunk_clips": 32},
              io={"manifest": manifest_dir, "out": store},
              runtime={**dask, "codec": preset["features"]["codec"]},
              outputs=["features/features.zarr", "features/features.zarr.bad_clips.csv"]),
    ]
    imported = imported_teachers(options, configured_families(preset))
    for fam, weights in imported.items():
        stages.append(_import_stage(fam, weights, options, store, preset_name, settings))
    for group, data_overrides in groups(profile, options.folds, options.val_on_test):
        config = resolve_config(preset_name, [*settings, *data_overrides])
        train = {"pretrained_from_hub": options.pretrained_from_hub, **device,
                 "extra": {"preset": preset_name, "overrides": [*settings, *data_overrides]}}
        baseline = {**train, "extra": {**train["extra"], "overrides": [
            item for item in train["extra"]["overrides"] if not item.startswith("kd.")]}}  # never read by it
        checkpoints: dict[str, tuple[str, str]] = {}  # family -> (teacher stage, its checkpoint)
        for fam in configured_families(config):
            if fam in imported:
                name = f"import-{fam}"
                checkpoints[fam] = (name, str(run / name / "teacher.pt"))
            else:
                name = f"{group}/train-{fam}"
                stages.append(_train_stage(name, fam, config, store, run, baseline,
                                           labels={"group": group, "model": fam}))
                checkpoints[fam] = (name, str(run / name / "final.pt"))
            logits = f"{group}/logits-{fam}"
            teacher_config = select_family(config, fam)
            stages.append(Stage(logits, "teacher-logits", [name], _views(teacher_config),
                                io={"features": store, "checkpoint": checkpoints[fam][1],
                                    "out": str(run / logits / "logits.zarr")},
                                runtime={**dask, **device, "batch_size": int(teacher_config["data"]["batch_size"])},
                                outputs=[f"{logits}/logits.zarr"]))
        for student, teacher, suffix, kd in _students(profile, config):
            name = f"{group}/student-{student}-from-{teacher}{suffix}"
            student_config = copy.deepcopy(config)
            student_config["kd"].update(kd)
            online = suffix == "-online"
            source = (*checkpoints[teacher], "checkpoint") if online else \
                (f"{group}/logits-{teacher}", str(run / group / f"logits-{teacher}" / "logits.zarr"), "logits")
            stages.append(_train_stage(
                name, student, student_config, store, run, train, teacher=(source[2], source[1]),
                deps=[source[0]], labels={"group": group, "model": student, "teacher": teacher,
                                          "teaching": "online" if online else "cached",
                                          "kd_form": student_config["kd"]["form"]}))
    trained = [s.name for s in stages if s.kind in ("train", "train-student")]
    stages.append(Stage("report", "report", trained, {}, io={"run_dir": str(run), "out": str(run / "report")},
                        outputs=["report/report.md"]))
    return stages


def _students(profile: DatasetProfile, config: dict[str, Any]) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(student, teacher, folder suffix, kd settings) of every student stage of a group."""
    families = configured_families(config)
    students = [(s, t, "", {}) for s in families for t in families]
    if profile.online_reference:
        student, teacher = profile.online_reference
        students.append((student, teacher, "-online", {}))
    cross = next((s, t) for s in families for t in families if s != t)
    default_form = config["kd"]["form"]  # the plain cross-model student already trains with it
    students += [(*cross, f"-{form}", {"form": form}) for form in profile.kd_forms if form != default_form]
    return students


def _train_stage(name: str, fam: str, config: dict[str, Any], store: str, run: Path, runtime: dict[str, Any], *,
                 labels: dict[str, Any], teacher: tuple[str, str] | None = None,
                 deps: list[str] | None = None) -> Stage:
    """A training stage: a baseline/teacher, or a student taught from cached logits or an online teacher.
    A baseline's `kd` section is null (it has no teacher), so a KD setting never retrains the teachers."""
    params = {"family": fam, "config": select_family(config, fam),
              "teacher": None if teacher is None else teacher[0]}
    if teacher is None:
        params["config"]["kd"] = None  # a baseline has no teacher: plain task loss
    unread = [("config", *key) for key in RUNTIME_TRAIN_KEYS]
    io = {"features": store, "out": str(run / name)}
    if teacher is not None:
        io["teacher"] = teacher[1]
    kind = "train" if teacher is None else "train-student"
    return Stage(name, kind, ["features", *(deps or [])], params, io=io, runtime=runtime,
                 outputs=[f"{name}/final.pt"], labels=labels, unread=tuple(unread), distributed=True)


def _views(config: dict[str, Any]) -> dict[str, Any]:
    """Teacher-logits settings from a (family-selected) training config: K views, each with the preset's
    SpecAugment (and its mask fill), mixup (rate, α, mixing domain) and time shift, so a student replays exactly what it trains on."""
    aug, kd = config["augment"], config["kd"]
    return {"views": {"n_views": int(kd["views"]), "freq_mask": int(aug["freq_mask"]),
                      "time_mask": int(aug["time_mask"]), "mixup_rate": float(aug["mixup_rate"]),
                      "alpha": float(aug["mixup_alpha"]), "seed": int(config["train"]["seed"]),
                      "time_shift": int(aug.get("time_shift", 0)), "mask_fill": aug.get("mask_fill", "zero")},
            "mix_mode": aug["mixup_mode"]}


# ------------------------------------------------------------------------------------------ state
def input_fingerprints(stage: Stage, run_dir: Path) -> dict[str, str]:
    """Identity of each result a stage depends on: its record's fingerprint and run id ('missing' where a
    dependency has no record), so a dependency that ran again makes this stage stale."""
    out = {}
    for dep in stage.deps:
        record = read_record(run_dir / dep)
        out[dep] = f"{record['fingerprint']}@{record.get('run_id', '')}" if record else "missing"
    return out


def evidence(stage: Stage) -> dict[str, str]:
    """What the stage read from outside the run folder, as it is now: the corpus' index files (manifest)
    and the audio files' sizes and times (features). Kept in the record; a difference makes it stale."""
    if stage.kind == "manifest":
        return index_files(stage.params["data_root"])
    if stage.kind == "features" and (Path(stage.io["manifest"]) / "manifest.json").is_file():
        return {"audio files (size, time)": audio_digest(stage.io["manifest"])}
    if stage.kind == "import-teacher":
        files = [Path(stage.io["weights"]), *([Path(stage.io["labels"])] if "labels" in stage.io else [])]
        return {f"teacher file {path.name} (size, time)": _file_stat(path) for path in _files_of(files)}
    return {}


def _files_of(paths: list[Path]) -> list[Path]:
    """The files themselves, and a folder's files (a Hugging Face model folder), in order."""
    return [f for p in paths for f in (sorted(x for x in p.iterdir() if x.is_file()) if p.is_dir() else [p])]


def _file_stat(path: Path) -> str:
    """'size:mtime' of a file (no bytes read: teacher weights are hundreds of MB), or 'missing'."""
    try:
        stat = path.stat()
    except OSError:
        return "missing"
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def state(stage: Stage, run_dir: Path) -> tuple[str, str]:
    """(status, detail): done | stale | failed | incomplete | not started."""
    folder = run_dir / stage.name
    record = read_record(folder)
    failure = read_failure(folder)
    if record is not None:
        inputs = input_fingerprints(stage, run_dir)
        if record["fingerprint"] == stage_fingerprint(stage.kind, stage.identity(), inputs):
            seen, now = record.get("evidence", {}), evidence(stage)
            edited = sorted(k for k in set(seen) | set(now) if seen.get(k) != now.get(k))
            if edited:
                return "stale", f"input changed: {', '.join(edited[:4])}" + (" …" if len(edited) > 4 else "")
            return "done", f"{record['seconds']:.1f} s"
        changed = _changed_keys(record.get("config"), stage.identity())
        if changed:
            return "stale", f"config changed: {', '.join(changed[:4])}" + (" …" if len(changed) > 4 else "")
        moved = [k for k, v in inputs.items() if record["inputs"].get(k) != v]
        return "stale", f"input changed: {', '.join(moved) or 'code'}"
    if failure is not None:
        return "failed", f"{failure['error']} (log: {failure['log']})"
    if folder.exists() and any(p.name not in (CONFIG_NAME, PREVIOUS) for p in folder.iterdir()):
        return "incomplete", "started, not finished (killed or running)"
    return "not started", ""


def _changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two configs, as `key old → new`."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            out += _changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    as_json = json.loads(json.dumps(new, default=str))
    return [] if old == as_json else [f"{prefix.rstrip('.')} {json.dumps(old)} → {json.dumps(as_json)}"]


def stage_file(stage: Stage) -> dict[str, Any]:
    """The content of a stage's config.json."""
    return {"stage": stage.kind, "name": stage.name, "params": stage.params, "runtime": stage.runtime,
            "io": stage.io, "labels": stage.labels, "deps": stage.deps}


def write_config_file(stage: Stage, run_dir: Path) -> bool:
    """Write <stage>/config.json when its content changes (Make sees the new time); True if it changed."""
    path = run_dir / stage.name / CONFIG_NAME
    content = json.loads(json.dumps(stage_file(stage), default=str))
    if read_json(path) == content:
        return False
    write_json_atomic(path, content)
    return True


# ------------------------------------------------------------------------------------------- run
class StageFailed(RuntimeError):
    pass


def run_stage(stage: Stage, run_dir: Path, options: RunOptions, threads: int | None = None,
              on_progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run one stage from its config.json as a subprocess, then write its record (or its failure note).
    A stale stage's earlier outputs move to `previous/` (one generation) instead of being deleted."""
    folder = run_dir / stage.name
    folder.mkdir(parents=True, exist_ok=True)
    set_aside = read_record(folder) is not None  # stale: its outputs must not be resumed from
    if set_aside:
        _set_aside(folder)
    inputs = input_fingerprints(stage, run_dir)
    missing = [dep for dep, fp in inputs.items() if fp == "missing"]
    if missing:
        raise StageFailed(f"{stage.name}: dependencies not done: {', '.join(missing)}")
    write_config_file(stage, run_dir)
    (folder / FAILURE_NAME).unlink(missing_ok=True)  # a run killed from now on shows as incomplete
    log = folder / "log.txt"
    command = _command(stage, folder, options)
    env = {**os.environ, "CMKD_PIPE_TRACEBACK": "1", **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    started = time.time()
    with open(log, "ab") as handle:
        handle.write(f"\n$ {' '.join(command)}\n".encode())
        handle.flush()
        if options.warm_start and not _torchrun(stage, options):
            process = warm_process.start(command[1:], env, WARM_PRELOAD)  # `command` minus the interpreter's imports
        else:
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        code = _call_logged(process, handle, on_progress)
    if code != 0:
        error = describe_exit(code, log)
        if set_aside:
            _restore_if_untouched(folder)
        write_failure(folder, stage=stage.name, error=error, log=str(log))
        raise StageFailed(f"{stage.name} failed: {error} (full log: {log})")
    if options.clean:
        shutil.rmtree(folder / PREVIOUS, ignore_errors=True)
    return write_record(folder, stage=stage.kind, config=stage.identity(), inputs=inputs, outputs=stage.outputs,
                        started=started, finished=time.time(),
                        extra={"labels": stage.labels, "evidence": evidence(stage)})


def _call_logged(process: subprocess.Popen | warm_process.WarmProcess, log,
                 on_progress: Callable[[str], None] | None) -> int:
    """Wait for a started stage, writing its output to `log` one line per update: progress bars redraw a
    line with carriage returns, which become line ends here, so a log holds no half-drawn frames."""
    pending = b""
    for block in iter(lambda: process.stdout.read1(65536), b""):
        pending += block.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line.strip():
                log.write(line + b"\n")
                if on_progress:
                    on_progress(line.decode(errors="replace"))
        log.flush()
    if pending.strip():
        log.write(pending + b"\n")
    return process.wait()


def describe_exit(code: int, log: Path) -> str:
    """What ended a stage: the signal that killed it, else its error line, else its exit code."""
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else "?"
        hint = " (killed: by a user, a scheduler or the out-of-memory killer)" if -code == signal.SIGKILL else ""
        return f"killed by signal {-code} ({name}){hint}"
    return _last_error(log) or f"exit code {code}"


def _torchrun(stage: Stage, options: RunOptions) -> bool:
    return stage.distributed and options.nproc > 1


def _command(stage: Stage, folder: Path, options: RunOptions) -> list[str]:
    args = ["-m", "cmkd_pipe.cli.app", "run-stage", str(folder)]
    if _torchrun(stage, options):
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={options.nproc}",
                *args]
    return [sys.executable, *args]


def _last_error(log: Path) -> str:
    """The last error line of the stage's latest run in its log (never a progress-bar frame)."""
    text = log.read_text(errors="replace")
    lines = [line.strip() for line in text[text.rfind("\n$ ") + 1:].splitlines()[1:] if line.strip()]
    for line in reversed(lines):
        if line.startswith("error:") or "Error" in line.split(":")[0]:
            return line
    return ""


def _restore_if_untouched(folder: Path) -> None:
    """A stale rerun that failed before writing any output (a typo'd path, a bad setting): put the previous
    outputs and record back, so nothing is lost and nothing downstream reruns. A rerun that wrote outputs
    keeps them for its resume; the previous generation stays in `previous/`."""
    if any(item.name not in (CONFIG_NAME, "log.txt", PREVIOUS, FAILURE_NAME) for item in folder.iterdir()):
        return
    previous = folder / PREVIOUS
    for item in previous.iterdir():
        os.replace(item, folder / item.name)
    previous.rmdir()


def _set_aside(folder: Path) -> None:
    """Move a stale stage's outputs into `previous/` (replacing an older generation there)."""
    previous = folder / PREVIOUS
    if previous.exists():
        shutil.rmtree(previous)
    items = [item for item in folder.iterdir() if item.name not in (CONFIG_NAME, "log.txt", PREVIOUS)]
    previous.mkdir()
    for item in items:
        os.replace(item, previous / item.name)


def select(stages: list[Stage], until: str | None = None, only: str | None = None) -> list[Stage]:
    """The stages needed for `until` (a stage name or kind, with its dependencies) or just `only`."""
    by_name = {s.name: s for s in stages}
    if only:
        chosen = [s for s in stages if s.name == only or s.kind == only]
        if not chosen:
            raise ValueError(f"no stage named {only!r}; stages: {', '.join(by_name)}")
        return chosen
    if not until:
        return stages
    targets = [s for s in stages if s.name == until or s.kind == until]
    if not targets:
        raise ValueError(f"no stage named {until!r}; stages: {', '.join(by_name)}")
    needed: set[str] = set()
    todo = [t.name for t in targets]
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo.extend(by_name[name].deps)
    return [s for s in stages if s.name in needed]


def run(options: RunOptions, until: str | None = None, only: str | None = None,
        echo: Callable[[str], None] = print) -> list[tuple[str, str]]:
    """Run every selected stage that is not done, `options.jobs` at a time as their inputs finish;
    after a failure no new stage starts, the running ones finish, then the failure is raised."""
    stages = plan(options)
    run_dir = options.run_dir
    for stage in stages:
        write_config_file(stage, run_dir)
    write_json_atomic(run_dir / "run.json", {"dataset": options.dataset, "data_root": str(options.data_root),
                                             "preset": options.preset, "overrides": options.overrides,
                                             "folds": options.folds, "val_on_test": options.val_on_test,
                                             "teachers": options.teachers, "teacher_labels": options.teacher_labels,
                                             "allow_unmapped": options.allow_unmapped})
    chosen = select(stages, until, only)
    todo: list[tuple[Stage, str]] = []
    for stage in chosen:
        status, _ = state(stage, run_dir)
        if status == "done" and not any(dep in {s.name for s, _ in todo} for dep in stage.deps):
            _touch(run_dir / stage.name / "stage.json", [run_dir / dep / "stage.json" for dep in stage.deps])
        else:
            todo.append((stage, status))
    jobs = max(1, options.jobs)
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None
    with _shared_cluster(options, [stage for stage, _ in todo]):
        return _run_ready(todo, run_dir, options, jobs, threads, echo)


@contextlib.contextmanager
def _shared_cluster(options: RunOptions, stages: list[Stage]) -> Iterator[None]:
    """One LocalCluster for every chunked stage of this run (a new one costs 10-15 s): its address reaches
    the stage processes as CMKD_PIPE_SCHEDULER, read where a stage has no scheduler of its own."""
    if options.scheduler or not any(stage.kind in CHUNKED for stage in stages) or _gpu_run(options):
        yield  # on a GPU a teacher-logits stage starts its own cluster of one worker per GPU
        return
    from cmkd_pipe.pipeline.parallel import local_cluster

    with local_cluster(options.workers or os.cpu_count() or 1) as cluster:
        os.environ[SCHEDULER_VARIABLE] = cluster.scheduler_address
        try:
            yield
        finally:
            os.environ.pop(SCHEDULER_VARIABLE, None)


def _gpu_run(options: RunOptions) -> bool:
    if options.device is not None:
        return not options.device.startswith("cpu")
    import torch

    return torch.cuda.is_available()


def _run_ready(todo: list[tuple[Stage, str]], run_dir: Path, options: RunOptions, jobs: int, threads: int | None,
               echo: Callable[[str], None]) -> list[tuple[str, str]]:
    """Start each pending stage once none of its dependencies is pending or running, in `start_order`."""
    priority = start_order([stage for stage, _ in todo])
    pending = sorted(todo, key=lambda item: priority[item[0].name])
    running: dict[Future, tuple[Stage, str]] = {}
    ran: list[tuple[str, str]] = []
    failures: list[StageFailed] = []
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        while pending or running:
            waiting = {s.name for s, _ in pending} | {s.name for s, _ in running.values()}
            ready = [item for item in pending if not set(item[0].deps) & waiting]
            while not failures and ready and len(running) < jobs:
                stage, status = ready.pop(0)
                pending.remove((stage, status))
                echo(f"▶ {stage.name} ({status})")
                live = _live_line(stage.name) if jobs == 1 else None
                running[pool.submit(run_stage, stage, run_dir, options, threads, live)] = (stage, status)
            if not running:
                break
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in done:
                stage, status = running.pop(future)
                try:
                    record = future.result()
                except StageFailed as error:
                    failures.append(error)
                    continue
                echo(f"✓ {stage.name} in {record['seconds']:.1f} s → {', '.join(stage.outputs)}")
                ran.append((stage.name, status))
    if failures:
        raise failures[0]
    return ran


def start_order(stages: list[Stage]) -> dict[str, tuple[float, ...]]:
    """Sort key of each stage among those ready at once: first the stages more others wait for (teachers
    before their logits and students), then the longest (a training's epochs, doubled for an online
    student that also runs its teacher), then plan order; so the run ends on short stages, not a long one
    with the other cores idle."""
    dependents: dict[str, set[str]] = {stage.name: set() for stage in stages}
    for stage in reversed(stages):  # plan order lists a stage after its dependencies
        for dep in stage.deps:
            if dep in dependents:
                dependents[dep] |= {stage.name} | dependents[stage.name]

    def cost(stage: Stage) -> float:
        epochs = ((stage.params.get("config") or {}).get("train") or {}).get("epochs") or 0
        return float(epochs) * (2 if stage.labels.get("teaching") == "online" else 1)

    return {stage.name: (-len(dependents[stage.name]), -cost(stage), index) for index, stage in enumerate(stages)}


def _live_line(name: str) -> Callable[[str], None] | None:
    """On a terminal, the running stage's latest output line, redrawn in place."""
    if not sys.stderr.isatty():
        return None
    width = shutil.get_terminal_size().columns - 1

    def show(line: str) -> None:
        sys.stderr.write(f"\r\033[K  {name}: {line.strip()}"[:width] + "\r")
        sys.stderr.flush()
    return show


def _touch(path: Path, inputs: list[Path]) -> None:
    """Keep a done record newer than its config file and its inputs' records, so Make agrees it is up
    to date (a record can look older after a copy, a manual touch or clock skew on a shared disk)."""
    others = [other.stat().st_mtime for other in [path.with_name(CONFIG_NAME), *inputs] if other.exists()]
    if others and path.stat().st_mtime < max(others):
        os.utime(path)


def status_rows(options: RunOptions) -> list[dict[str, str]]:
    """One row per stage; a done stage whose input is stale shows as stale too (it reruns after it)."""
    rows: list[dict[str, str]] = []
    statuses: dict[str, str] = {}
    for stage in plan(options):
        status, detail = state(stage, options.run_dir)
        waiting = [dep for dep in stage.deps if statuses[dep] == "stale"]
        if status == "done" and waiting:
            status, detail = "stale", f"input is stale: {', '.join(waiting)}"
        statuses[stage.name] = status
        rows.append({"stage": stage.name, "status": status, "detail": detail,
                     "progress": _chunk_progress(stage, options.run_dir)})
    return rows


def _chunk_progress(stage: Stage, run_dir: Path) -> str:
    """done/total chunks for the chunked stages' stores."""
    if stage.kind not in CHUNKED:
        return ""
    store = Path(stage.io["out"])
    if not (store / "chunk_done" / "zarr.json").exists():
        return ""
    import numpy as np
    import zarr

    done = np.asarray(zarr.open_array(store=str(store / "chunk_done"), mode="r")[:])
    return f"{int(done.sum())}/{len(done)} chunks"


def make_rules(options: RunOptions, cli: str) -> str:
    """Make rules: each stage's record depends on its dependencies' records and its config file."""
    stages = plan(options)
    run_dir = options.run_dir
    lines = ["# generated by `cmkd-pipe plan`; do not edit", ""]
    base = (f"{cli} run --dataset {options.dataset} --data-root {options.data_root} --run-dir {run_dir} "
            + " ".join(f"--set '{item}'" for item in options.overrides)
            + (f" --folds {','.join(map(str, options.folds))}" if options.folds else "")
            + (" --val-on-test" if options.val_on_test else "")
            + (f" --preset {options.preset}" if options.preset else "")
            + (f" --nproc {options.nproc}" if options.nproc > 1 else "")
            + (f" --scheduler {options.scheduler}" if options.scheduler else "")
            + (" --pretrained-from-hub" if options.pretrained_from_hub else "")
            + "".join(f" --teacher '{item}'" for item in options.teachers)
            + (f" --teacher-labels {options.teacher_labels}" if options.teacher_labels else "")
            + (" --allow-unmapped" if options.allow_unmapped else ""))
    for stage in stages:
        write_config_file(stage, run_dir)
        target = run_dir / stage.name / "stage.json"
        prereqs = [str(run_dir / stage.name / CONFIG_NAME), *[str(run_dir / d / "stage.json") for d in stage.deps]]
        lines += [f"{target}: {' '.join(prereqs)}", f"\t@{base} --only {stage.name}", ""]
    kinds: dict[str, list[str]] = {kind: [] for kind in KINDS}  # every Make target exists, empty when unused
    for stage in stages:
        kinds.setdefault(stage.kind, []).append(str(run_dir / stage.name / "stage.json"))
    for kind, targets in kinds.items():
        lines += [f"stage-{kind}: {' '.join(targets)}", ""]
    lines += [f"stage-all: {' '.join(str(run_dir / s.name / 'stage.json') for s in stages)}", ""]
    return "\n".join(lines)
