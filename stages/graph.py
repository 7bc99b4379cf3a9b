"""The CMKD stage graph of a dataset: plan, run only what is missing or stale, report status.

Layout under RUN_DIR (one folder per stage, each with config.json, log.txt, and stage.json on success):
  manifest/  features/  <group>/train-{cnn,ast}/  <group>/logits-{cnn,ast}/
  <group>/student-{cnn,ast}-from-{cnn,ast}/  report/
A group is one cross-validation fold (`fold-K`) or `main` for a fixed train/test split.

A stage is *done* when stage.json exists and its fingerprint equals the hash of the stage's resolved
config and its inputs' identities (each input's fingerprint and the id of the run that made it, so a
rerun of an input reruns its dependents, as Make does); *stale* when the record exists but differs
(config or an input changed); *failed* when failed.json is newer than any record. Every stage runs as
a `cmkd-pipe` subprocess (under torchrun for training when nproc > 1) with its output in log.txt, so a
failure is contained and the stage resumes from its own state on the next run.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.datasets import DatasetProfile, get_profile
from pipeline.models.registry import configured_families
from pipeline.records import (read_failure, read_json, read_record, stage_fingerprint, write_failure,
                              write_json_atomic, write_record)
from pipeline.training.presets import resolve_config


@dataclass
class Stage:
    name: str  # folder relative to the run dir, e.g. "fold-1/train-cnn"
    kind: str
    deps: list[str]
    config: dict[str, Any]  # everything that determines the result
    argv: list[str]  # cmkd-pipe arguments
    outputs: list[str] = field(default_factory=list)
    distributed: bool = False  # a training stage that torchrun may launch


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


def groups(profile: DatasetProfile) -> list[tuple[str, list[str]]]:
    """(group name, data overrides) for every fold of the profile, or the single `main` group."""
    if not profile.folds:
        return [("main", [])]
    return [(f"fold-{k}", [f"data.train=fold!={k}", f"data.val=fold=={k}", f"data.test=fold=={k}"])
            for k in profile.folds]


def plan(options: RunOptions) -> list[Stage]:
    """Every stage of the CMKD experiment for the dataset, in a valid execution order."""
    profile = get_profile(options.dataset)
    run = options.run_dir
    preset = resolve_config(profile.preset, options.overrides)
    feats = profile.features
    features_store = str(run / "features" / "features.zarr")
    stages = [
        Stage("manifest", "manifest", [], {"builder": profile.builder, "data_root": str(options.data_root),
                                           "options": profile.builder_options},
              ["manifest", profile.builder, str(options.data_root), "--out", str(run / "manifest" / "manifest"),
               *[f"--option={k}={json.dumps(v)}" for k, v in profile.builder_options.items()]],
              ["manifest/manifest"]),
        Stage("features", "features", ["manifest"], {"features": feats.to_dict(), "chunk_clips": 32},
              ["features", "--manifest", str(run / "manifest" / "manifest"), "--out", features_store,
               "--target-frames", str(feats.target_frames), "--num-mel-bins", str(feats.num_mel_bins),
               "--sample-rate", str(feats.sample_rate), "--chunk-clips", "32", *_dask_args(options)],
              ["features/features.zarr", "features/bad_clips.csv"]),
    ]
    kd, aug = preset["kd"], preset["augment"]
    views = {"views": int(kd["views"]), "freq_mask": _family_value(aug["freq_mask"]),
             "time_mask": _family_value(aug["time_mask"]), "mixup_rate": _family_value(aug["mixup_rate"])}
    for group, data_overrides in groups(profile):
        settings = [*options.overrides, *data_overrides]
        for fam in configured_families(preset):
            name = f"{group}/train-{fam}"
            stages.append(Stage(name, "train", ["features"], _train_config(profile, fam, settings, kd=False),
                                _train_argv("train", fam, features_store, run / name, profile.preset, settings,
                                            options), [f"{name}/final.pt"], distributed=True))
            logits = f"{group}/logits-{fam}"
            stages.append(Stage(logits, "teacher-logits", [name], {"views": views},
                                ["teacher-logits", "--features", features_store, "--checkpoint",
                                 str(run / name / "final.pt"), "--out", str(run / logits / "logits.zarr"),
                                 "--views", str(views["views"]), "--freq-mask", str(views["freq_mask"]),
                                 "--time-mask", str(views["time_mask"]), "--mixup-rate", str(views["mixup_rate"]),
                                 *_dask_args(options), *_device_args(options)],
                                [f"{logits}/logits.zarr"]))
        for student in configured_families(preset):
            for teacher in configured_families(preset):
                name = f"{group}/student-{student}-from-{teacher}"
                argv = _train_argv("train-student", student, features_store, run / name, profile.preset, settings,
                                   options) + ["--logits", str(run / group / f"logits-{teacher}" / "logits.zarr")]
                stages.append(Stage(name, "train-student", ["features", f"{group}/logits-{teacher}"],
                                    _train_config(profile, student, settings, kd=True), argv, [f"{name}/final.pt"],
                                    distributed=True))
    trained = [s.name for s in stages if s.kind in ("train", "train-student")]
    stages.append(Stage("report", "report", trained, {}, ["report", str(run), "--out", str(run / "report")],
                        ["report/report.md"]))
    return stages


def _family_value(value: Any) -> Any:
    """Augment values may be per family ({cnn, ast}); views are shared, so take the AST one then."""
    return value["ast"] if isinstance(value, dict) else value


def _train_config(profile: DatasetProfile, fam: str, settings: list[str], kd: bool) -> dict[str, Any]:
    """A training stage's identity; without `kd` for a teacher, which never reads it (a KD setting
    must not retrain the teachers)."""
    from pipeline.training.presets import select_family

    config = select_family(resolve_config(profile.preset, settings), fam)
    if not kd:
        del config["kd"]
    return {"arch": fam, "config": config}


def _train_argv(command: str, fam: str, features: str, out: Path, preset: str, settings: list[str],
                options: RunOptions) -> list[str]:
    return [command, "--features", features, "--out", str(out), "--model", fam, "--preset", preset, "--resume",
            *[f"--set={item}" for item in settings], *_device_args(options),
            *(["--pretrained-from-hub"] if options.pretrained_from_hub else [])]


def _dask_args(options: RunOptions) -> list[str]:
    args = []
    if options.scheduler:
        args += ["--scheduler", options.scheduler]
    if options.workers:
        args += ["--workers", str(options.workers)]
    return args


def _device_args(options: RunOptions) -> list[str]:
    return ["--device", options.device] if options.device else []


# ------------------------------------------------------------------------------------------ state
def input_fingerprints(stage: Stage, run_dir: Path) -> dict[str, str]:
    """Identity of each result a stage depends on: its record's fingerprint and run id ('missing' where a
    dependency has no record), so a dependency that ran again makes this stage stale."""
    out = {}
    for dep in stage.deps:
        record = read_record(run_dir / dep)
        out[dep] = f"{record['fingerprint']}@{record.get('run_id', '')}" if record else "missing"
    return out


def state(stage: Stage, run_dir: Path) -> tuple[str, str]:
    """(status, detail): done | stale | failed | running-or-interrupted | not started."""
    folder = run_dir / stage.name
    record = read_record(folder)
    failure = read_failure(folder)
    if record is not None:
        wanted = stage_fingerprint(stage.kind, stage.config, input_fingerprints(stage, run_dir))
        if record["fingerprint"] == wanted:
            return "done", f"{record['seconds']:.1f} s"
        if record["config"] != stage.config:
            return "stale", "its config changed"
        changed = [k for k, v in input_fingerprints(stage, run_dir).items() if record["inputs"].get(k) != v]
        return "stale", f"input changed: {', '.join(changed) or 'code'}"
    if failure is not None:
        return "failed", f"{failure['error']} (log: {failure['log']})"
    if folder.exists() and any(p.name != "config.json" for p in folder.iterdir()):
        return "incomplete", "started, not finished (killed or running)"
    return "not started", ""


def write_config_file(stage: Stage, run_dir: Path) -> bool:
    """Write <stage>/config.json when its content changes (Make sees the new time); True if it changed."""
    path = run_dir / stage.name / "config.json"
    content = {"stage": stage.kind, "config": stage.config, "deps": stage.deps}
    if read_json(path) == json.loads(json.dumps(content, default=str)):
        return False
    write_json_atomic(path, content)
    return True


# ------------------------------------------------------------------------------------------- run
class StageFailed(RuntimeError):
    pass


def run_stage(stage: Stage, run_dir: Path, options: RunOptions) -> dict[str, Any]:
    """Run one stage as a subprocess, then write its record (or its failure note)."""
    folder = run_dir / stage.name
    folder.mkdir(parents=True, exist_ok=True)
    if read_record(folder) is not None:  # stale: its previous outputs must not be resumed from
        _clear(folder)
    inputs = input_fingerprints(stage, run_dir)
    missing = [dep for dep, fp in inputs.items() if fp == "missing"]
    if missing:
        raise StageFailed(f"{stage.name}: dependencies not done: {', '.join(missing)}")
    log = folder / "log.txt"
    command = _command(stage, options)
    started = time.time()
    with open(log, "ab") as handle:
        handle.write(f"\n$ {' '.join(command)}\n".encode())
        handle.flush()
        code = subprocess.call(command, stdout=handle, stderr=subprocess.STDOUT)
    if code != 0:
        error = _last_error(log) or f"exit code {code}"
        write_failure(folder, stage=stage.name, error=error, log=str(log))
        raise StageFailed(f"{stage.name} failed: {error} (full log: {log})")
    return write_record(folder, stage=stage.kind, config=stage.config, inputs=inputs, outputs=stage.outputs,
                        started=started, finished=time.time())


def _command(stage: Stage, options: RunOptions) -> list[str]:
    if stage.distributed and options.nproc > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={options.nproc}",
                "-m", "cli.app", *stage.argv]
    return [sys.executable, "-m", "cli.app", *stage.argv]


def _last_error(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("error:") or "Error" in line.split(":")[0]:
            return line
    return lines[-1] if lines else ""


def _clear(folder: Path) -> None:
    for item in folder.iterdir():
        if item.name in ("config.json", "log.txt"):
            continue
        shutil.rmtree(item) if item.is_dir() else item.unlink()


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
        echo=print) -> list[tuple[str, str]]:
    """Run every selected stage that is not done, in order; stop at the first failure."""
    stages = plan(options)
    run_dir = options.run_dir
    for stage in stages:
        write_config_file(stage, run_dir)
    write_json_atomic(run_dir / "run.json", {"dataset": options.dataset, "data_root": str(options.data_root),
                                             "overrides": options.overrides})
    ran = []
    for stage in select(stages, until, only):
        status, _ = state(stage, run_dir)
        if status == "done":
            _touch(run_dir / stage.name / "stage.json", [run_dir / dep / "stage.json" for dep in stage.deps])
            continue
        echo(f"▶ {stage.name} ({status})")
        record = run_stage(stage, run_dir, options)
        echo(f"✓ {stage.name} in {record['seconds']:.1f} s")
        ran.append((stage.name, status))
    return ran


def _touch(path: Path, inputs: list[Path]) -> None:
    """Keep a done record newer than its config file and its inputs' records, so Make agrees it is up
    to date (a record can look older after a copy, a manual touch or clock skew on a shared disk)."""
    others = [other.stat().st_mtime for other in [path.with_name("config.json"), *inputs] if other.exists()]
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
    store = {"features": run_dir / "features" / "features.zarr",
             "teacher-logits": run_dir / stage.name / "logits.zarr"}.get(stage.kind)
    if store is None or not (store / "chunk_done" / "zarr.json").exists():
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
            + (f" --nproc {options.nproc}" if options.nproc > 1 else "")
            + (f" --scheduler {options.scheduler}" if options.scheduler else "")
            + (" --pretrained-from-hub" if options.pretrained_from_hub else ""))
    for stage in stages:
        write_config_file(stage, run_dir)
        target = run_dir / stage.name / "stage.json"
        prereqs = [str(run_dir / stage.name / "config.json"), *[str(run_dir / d / "stage.json") for d in stage.deps]]
        lines += [f"{target}: {' '.join(prereqs)}", f"\t{base} --only {stage.name}", ""]
    kinds: dict[str, list[str]] = {}
    for stage in stages:
        kinds.setdefault(stage.kind, []).append(str(run_dir / stage.name / "stage.json"))
    for kind, targets in kinds.items():
        lines += [f"stage-{kind}: {' '.join(targets)}", ""]
    lines += [f"stage-all: {' '.join(str(run_dir / s.name / 'stage.json') for s in stages)}", ""]
    return "\n".join(lines)
