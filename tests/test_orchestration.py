"""The stage graph end to end on a tiny demo corpus, driven the way a user drives it.

One clear story: `cmkd-pipe run` builds every stage and the report; then one stage breaks for real
(its teacher checkpoint is gone and its logits store is left as a killed run leaves it), `make cmkd`
fails on it and `status` says why and where the log is; the cause is fixed, the SAME `make cmkd`
reruns only that stage and what depends on it, and a further `make cmkd` has nothing to do; finally a
changed KD temperature marks exactly the students and the report stale, and a run redoes only them.

Stages whose record changed are found by the record's run id (new on every run) and file time.
Make runs with `-o VENV/.installed`, so a test never reinstalls the environment. The chunked stages run
synchronously (the session's `scheduler`): no worker start-up in each stage's process.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr

from cmkd_pipe.data_manifests.demo import make_demo_corpus
from faults import REPO, cli, stage_env
from cmkd_pipe.pipeline.records import read_record
from cmkd_pipe.stages.graph import RunOptions, plan, status_rows

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU Make")]

# Demo profile (64 mel bins x 200 frames, folds: train 2, test 1), one epoch of one step per model.
SETTINGS = ["train.epochs=1", "average.wa_start_epoch=null", "average.wa_end_epoch=null", "data.batch_size=8",
            "average.ensemble=false"]
STUDENTS = {f"fold-1/student-{s}-from-{t}" for s in ("cnn", "ast") for t in ("cnn", "ast")} | {
    "fold-1/student-ast-from-cnn-online"}
VENV = Path(sys.executable).parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(cli(*args), cwd=REPO, env=stage_env(), capture_output=True, text=True, timeout=900)


def make(data: Path, run: Path, settings: list[str], scheduler: str) -> subprocess.CompletedProcess:
    """`make cmkd` with the repository Makefile, as a user types it."""
    env = {k: v for k, v in stage_env(LC_ALL="C").items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    return subprocess.run(["make", "--no-print-directory", "-C", str(REPO), "-o", f"{VENV}/.installed", "cmkd",
                           f"VENV={VENV}", "DATASET=demo", f"DATA_ROOT={data}", f"RUN_DIR={run}",
                           f"SET={' '.join(settings)}", f"SCHEDULER={scheduler}", "FOLDS=1"],
                          env=env, capture_output=True, text=True, timeout=900)


def records(options: RunOptions) -> dict[str, tuple[str, int] | None]:
    """(run id, file time) of every stage's completion record; None where there is none."""
    out = {}
    for stage in plan(options):
        record = read_record(options.run_dir / stage.name)
        path = options.run_dir / stage.name / "stage.json"
        out[stage.name] = (record["run_id"], path.stat().st_mtime_ns) if record else None
    return out


def changed(before: dict, after: dict) -> set[str]:
    return {name for name in before if after[name] != before[name]}


def statuses(options: RunOptions) -> dict[str, str]:
    return {row["stage"]: row["status"] for row in status_rows(options)}


def test_break_one_stage_rerun_only_it_and_its_dependents(tmp_path, scheduler):
    data, run = tmp_path / "data", tmp_path / "run"
    make_demo_corpus(data, clips_per_class=3, n_folds=3, clip_seconds=1.0)  # 36 clips: train 3, val 2, test 1
    options = RunOptions(dataset="demo", run_dir=run, data_root=data, overrides=SETTINGS, folds=[1])
    common = ["--dataset", "demo", "--data-root", str(data), "--run-dir", str(run), "--scheduler", scheduler,
              "--folds", "1"]

    # 1. everything, then the report
    first = run_cli("run", *common, *[f"--set={item}" for item in SETTINGS])
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert first.stdout.count("✓ ") == 12 and "## Missing runs\n\nNone." in first.stdout  # the report
    assert (run / "report" / "report.md").is_file()
    assert set(statuses(options).values()) == {"done"}
    built = records(options)

    # 2. break fold-1/logits-cnn for real: its record gone, its store as a killed run leaves it, its
    #    teacher checkpoint missing
    logits = run / "fold-1" / "logits-cnn" / "logits.zarr"
    values = np.asarray(zarr.open_group(store=str(logits), mode="r")["logits"][:])
    (run / "fold-1" / "logits-cnn" / "stage.json").unlink()
    group = zarr.open_group(store=str(logits), mode="r+")
    group["chunk_done"][0] = 0
    group.attrs["complete"] = False
    teacher = run / "fold-1" / "train-cnn" / "final.pt"
    shutil.move(teacher, tmp_path / "final.pt")

    failed = make(data, run, SETTINGS, scheduler)
    assert failed.returncode != 0
    assert "fold-1/logits-cnn failed: error: checkpoint" in failed.stderr, failed.stderr[-3000:]
    shown = run_cli("status", "--dataset", "demo", "--data-root", str(data), "--run-dir", str(run), "--folds", "1",
                    *[f"--set={item}" for item in SETTINGS])
    row = next(line for line in shown.stdout.splitlines() if line.startswith("fold-1/logits-cnn "))
    assert "failed" in row and "no such file" in row and f"(log: {run}/fold-1/logits-cnn/log.txt)" in row
    assert "1/2 chunks" in row
    state = statuses(options)
    assert state["fold-1/logits-cnn"] == "failed"
    assert {name for name, s in state.items() if s == "stale"} == {"fold-1/student-cnn-from-cnn",
                                                                   "fold-1/student-ast-from-cnn", "report"}
    broken = records(options)
    assert changed(built, broken) == {"fold-1/logits-cnn"} and broken["fold-1/logits-cnn"] is None

    # 3. fix the cause; the same command reruns the broken stage and its dependents, nothing else
    shutil.move(tmp_path / "final.pt", teacher)
    fixed = make(data, run, SETTINGS, scheduler)
    assert fixed.returncode == 0, fixed.stdout[-3000:] + fixed.stderr[-3000:]
    assert "# CMKD report" in fixed.stdout  # `make cmkd` prints it
    after = records(options)
    assert changed(built, after) == {"fold-1/logits-cnn", "fold-1/student-cnn-from-cnn",
                                     "fold-1/student-ast-from-cnn", "report"}
    assert np.array_equal(np.asarray(zarr.open_group(store=str(logits), mode="r")["logits"][:]), values)
    assert set(statuses(options).values()) == {"done"}

    # 4. Make and the records agree: nothing left to do
    again = make(data, run, SETTINGS, scheduler)
    assert again.returncode == 0 and "Nothing to be done for 'stage-all'" in again.stdout, again.stdout[-3000:]
    assert records(options) == after

    # 5. another KD temperature: exactly the students and the report are stale, and only they rerun
    hotter = [*SETTINGS, "kd.tau=2.0"]
    hot = RunOptions(dataset="demo", run_dir=run, data_root=data, overrides=hotter, folds=[1])
    state = statuses(hot)
    assert {name for name, s in state.items() if s != "done"} == STUDENTS | {"report"}
    assert set(state.values()) == {"done", "stale"}
    second = run_cli("run", *common, *[f"--set={item}" for item in hotter])
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert changed(after, records(hot)) == STUDENTS | {"report"}
    assert set(statuses(hot).values()) == {"done"}
    student = yaml.safe_load((run / "fold-1" / "student-ast-from-cnn" / "config.yaml").read_text())
    assert student["kd"]["tau"] == 2.0
