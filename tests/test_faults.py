"""Faults: stages SIGKILLed at seeded random moments and rerun, a full disk, a read-only output folder.

Each killed stage is rerun until it completes and then compared with an uninterrupted run: the feature
and teacher-logits stores bitwise (every chunk done once, none lost), a deterministic training run's
final weights within float tolerance. After every kill, what the run left behind is checked: a store
without `complete` is refused by its reader, and every chunk it marks done already holds the final
values; every checkpoint file present loads (they are written atomically).

The in-process reference runs are synchronous (the session's `scheduler`); the killed CLI runs start
their own LocalCluster, as a user's would, and die with their process group (tests/faults.py).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from faults import (REPO, after_change, after_chunks, chunk_markers, cli, fill_disk, kill_and_rerun, mtime_ns,
                    run_to_end, set_writable, small_disk, stage_env, without_permission_override)
from cmkd_pipe.pipeline.config import FeatureConfig
from cmkd_pipe.pipeline.models.checkpoint import read_checkpoint
from cmkd_pipe.pipeline.parallel import StageTasksFailed
from cmkd_pipe.pipeline.stores import logits_store as ls
from cmkd_pipe.pipeline.stores.chunks import StoreError
from cmkd_pipe.pipeline.stores.feature_store import FeatureStore
from cmkd_pipe.stages.features import run_features
from cmkd_pipe.stages.teacher_logits import run_teacher_logits

# SIGKILLs per stage in the random-kill tests (seeded moments); CI runs this small number, a soak run more:
# CMKD_PIPE_KILLS=20 make test-all
KILLS = int(os.environ.get("CMKD_PIPE_KILLS", "2"))

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").is_file(),
                                reason="needs Linux /proc to watch process groups")

CONFIG = FeatureConfig(num_mel_bins=32, target_frames=64)  # the smoke preset's front-end
FEATURE_ARGS = ["--target-frames", "64", "--num-mel-bins", "32", "--chunk-clips", "1"]
N_CLIPS = 24
TINY_AST = {"arch": "ast", "size": "custom", "embed_dim": 32, "depth": 2, "num_heads": 2, "patch": 16,
            "fstride": 16, "tstride": 16}
VIEW_ARGS = ["--views", "3", "--freq-mask", "4", "--time-mask", "8", "--mixup-rate", "0.5"]
VIEWS = {"views": 3, "freq_mask": 4, "time_mask": 8, "mixup_rate": 0.5}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, corpus_writer, make_tone) -> Path:
    """24 stereo 44.1 kHz clips of 4 s (resampling makes each one-clip chunk take a while), 18 train, 6 eval."""
    clips = [{"clip_id": f"clip{i:02d}", "labels": ["abc"[i % 3]], "split": "train" if i % 4 else "eval",
              "sr": 44100, "audio": make_tone(300.0 + 37 * i, 4.0, 44100, 0.3, channels=2, noise=0.1, seed=i)}
             for i in range(N_CLIPS)]
    return corpus_writer(tmp_path_factory.mktemp("corpus"), clips)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus, scheduler) -> Path:
    """The feature store of an uninterrupted run."""
    store = tmp_path_factory.mktemp("reference") / "features.zarr"
    run_features(corpus, store, config=CONFIG, chunk_clips=1, scheduler=scheduler, progress=False)
    return store


def chunk_bits(store: Path, array: str) -> np.ndarray:
    """An array's raw bits, so float comparisons are bitwise."""
    values = np.asarray(zarr.open_group(store=str(store), mode="r")[array][:])
    return values.view(np.uint16 if values.dtype == np.float16 else np.uint32)


def check_left_store(store: Path, reference_bits: np.ndarray, array: str, reader) -> None:
    """What a killed run left: no store, or one whose reader refuses it unless complete, and whose done
    chunks (one clip each) already hold the reference values."""
    if not (store / "zarr.json").is_file():
        return
    group = zarr.open_group(store=str(store), mode="r")
    done = np.asarray(group["chunk_done"][:]).astype(bool)
    if group.attrs["complete"]:
        assert done.all()
    else:
        with pytest.raises(StoreError, match="incomplete"):
            reader(store)
    assert np.array_equal(chunk_bits(store, array)[done], reference_bits[done])


def killed_store_checker(store: Path, reference_bits: np.ndarray, array: str, reader, done: list[int]):
    """after_kill for a chunked stage: check what the run left and note how many chunks were done."""
    def check(attempt: int) -> None:
        check_left_store(store, reference_bits, array, reader)
        done.append(chunk_markers(store))
    return check


# ---------------------------------------------------------------------------- killed stages

@pytest.mark.slow
def test_killed_feature_stage_resumes_to_the_same_store(tmp_path, corpus, reference):
    store = tmp_path / "features.zarr"
    want = chunk_bits(reference, "fbank")
    done: list[int] = []
    outcome = kill_and_rerun(
        cli("features", "--manifest", str(corpus), "--out", str(store), "--workers", "1", *FEATURE_ARGS),
        seed=11, kills=KILLS, log_dir=tmp_path / "logs", trigger=after_chunks(store, 1, 6),
        after_kill=killed_store_checker(store, want, "fbank", FeatureStore, done))
    assert len(outcome.kill_times) == 2 and not outcome.finished_early, outcome
    assert 0 < done[0] < done[1] < N_CLIPS  # both kills landed mid-stage, each after some progress

    resumed, uninterrupted = FeatureStore(store), FeatureStore(reference)
    assert np.asarray(resumed.group["chunk_done"][:]).tolist() == [1] * N_CLIPS
    assert np.array_equal(chunk_bits(store, "fbank"), want)
    for name in ("valid_frames", "ok", "chunk_stats"):
        np.testing.assert_array_equal(resumed.group[name][:], uninterrupted.group[name][:])
    assert (resumed.mean, resumed.std) == (uninterrupted.mean, uninterrupted.std)


@pytest.mark.slow
def test_killed_teacher_logits_stage_resumes_to_the_same_store(tmp_path, reference, scheduler, random_teacher):
    teacher = tmp_path / "teacher.pt"
    random_teacher(teacher, FeatureStore(reference), TINY_AST)  # a random tiny AST
    expected = tmp_path / "reference-logits.zarr"
    run_teacher_logits(reference, teacher, expected, **VIEWS, chunk_clips=1, batch_size=4, device="cpu",
                       scheduler=scheduler, progress=False)
    want = chunk_bits(expected, "logits")
    store = tmp_path / "logits.zarr"
    done: list[int] = []
    outcome = kill_and_rerun(
        cli("teacher-logits", "--features", str(reference), "--checkpoint", str(teacher), "--out", str(store),
            *VIEW_ARGS, "--chunk-clips", "1", "--batch-size", "4", "--workers", "1", "--device", "cpu"),
        seed=12, kills=KILLS, log_dir=tmp_path / "logs", trigger=after_chunks(store, 1, 6),
        after_kill=killed_store_checker(store, want, "logits", ls.LogitsStore, done))
    assert len(outcome.kill_times) == 2 and not outcome.finished_early, outcome
    assert 0 < done[0] < done[1] < N_CLIPS

    resumed = ls.LogitsStore(store)
    assert np.asarray(resumed.group["chunk_done"][:]).tolist() == [1] * N_CLIPS
    assert np.array_equal(chunk_bits(store, "logits"), want)
    assert np.abs(want).max() > 0


def check_checkpoints_load(run: Path) -> None:
    """Every checkpoint a killed training run left is whole (temp files are named .NAME.tmp)."""
    for path in run.rglob("*.pt"):
        if not path.name.startswith("."):
            torch.load(path, map_location="cpu", weights_only=False)


@pytest.mark.slow
def test_killed_training_resumes_to_the_same_weights(tmp_path, reference):
    settings = ["train.deterministic=true", "train.checkpoint_every_steps=1", "train.epochs=4", "data.epoch_len=48",
                "data.batch_size=2", "model.ast.embed_dim=32", "model.ast.depth=2"]  # 4 x 24 steps

    def command(out: Path) -> list[str]:
        return cli("train", "--features", str(reference), "--out", str(out), "--model", "ast", "--preset", "smoke",
                   "--resume", "--device", "cpu", *[f"--set={item}" for item in settings])

    run_to_end(command(tmp_path / "uninterrupted"), tmp_path / "uninterrupted.log")
    run = tmp_path / "killed"
    last = run / "checkpoints" / "last.pt"
    outcome = kill_and_rerun(command(run), seed=13, kills=KILLS, log_dir=tmp_path / "logs",
                             trigger=after_change(lambda: mtime_ns(last), 0.0, 0.5),
                             after_kill=lambda attempt: check_checkpoints_load(run))
    assert len(outcome.kill_times) == 2 and not outcome.finished_early, outcome

    killed = read_checkpoint(run / "final.pt")["state_dict"]
    uninterrupted = read_checkpoint(tmp_path / "uninterrupted" / "final.pt")["state_dict"]
    assert killed.keys() == uninterrupted.keys()
    for name, value in uninterrupted.items():
        torch.testing.assert_close(killed[name], value, rtol=1e-5, atol=1e-7, msg=name)
    results = [json.loads((folder / "results.json").read_text()) for folder in (run, tmp_path / "uninterrupted")]
    assert results[0]["final"] == results[1]["final"] == "wa"
    assert results[0]["last"]["accuracy"] == results[1]["last"]["accuracy"]


# ---------------------------------------------------------------------------- disk and rights

def one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    return lines[0]


def test_read_only_output_folder_is_a_one_line_error_and_keeps_earlier_outputs(tmp_path, corpus, reference):
    folder = tmp_path / "out"
    earlier = folder / "earlier.zarr"
    shutil.copytree(reference, earlier)
    try:
        command = without_permission_override(cli("features", "--manifest", str(corpus), "--out",
                                                  str(folder / "new.zarr"), "--workers", "1", *FEATURE_ARGS))
    except OSError as error:
        pytest.skip(str(error))
    set_writable(folder, False)
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=stage_env(), cwd=REPO, timeout=300)
    finally:
        set_writable(folder, True)
    assert done.returncode == 1
    line = one_line_error(done.stderr)
    assert "new.zarr: cannot write: Permission denied" in line and "fix the permissions" in line
    assert sorted(p.name for p in folder.iterdir()) == ["earlier.zarr"]  # no half-made store or temp folder
    assert np.array_equal(chunk_bits(earlier, "fbank"), chunk_bits(reference, "fbank"))
    FeatureStore(earlier)


@pytest.fixture
def disk(tmp_path) -> Iterator[Path]:
    """An 8 MB tmpfs to fill up (needs root: mount)."""
    try:
        with small_disk(tmp_path / "disk", "8M") as path:
            yield path
    except OSError as error:
        pytest.skip(f"no small disk to fill: {error}")


def test_full_disk_fails_clearly_keeps_done_chunks_and_resumes(disk, tmp_path, corpus, reference, scheduler):
    store = disk / "features.zarr"
    shutil.copytree(reference, store)
    group = zarr.open_group(store=str(store), mode="r+")
    pending = [2, 3, 7, 11, 12, 20]
    for index in pending:  # as a run killed after the other chunks leaves it
        group["chunk_done"][index] = 0
    group.attrs["complete"] = False
    want = chunk_bits(reference, "fbank")
    filler = fill_disk(disk)

    with pytest.raises(StageTasksFailed) as failed:
        run_features(corpus, store, config=CONFIG, chunk_clips=1, scheduler=scheduler, progress=False)
    message = str(failed.value)
    assert "\n" not in message and "No space left on device" in message and "finished chunks are kept" in message
    assert len(failed.value.failures) == len(pending)
    with pytest.raises(StoreError, match="cannot write: No space left on device"):
        run_features(corpus, disk / "other.zarr", config=CONFIG, chunk_clips=1, scheduler=scheduler,
                     progress=False)
    assert sorted(p.name for p in disk.iterdir()) == ["features.zarr", "filler.bin"]  # no temp folder left
    check_left_store(store, want, "fbank", FeatureStore)
    assert np.flatnonzero(np.asarray(group["chunk_done"][:]) == 0).tolist() == pending

    filler.unlink()
    summary = run_features(corpus, store, config=CONFIG, chunk_clips=1, scheduler=scheduler, progress=False)
    assert summary["chunks_run"] == len(pending)
    assert np.array_equal(chunk_bits(store, "fbank"), want)
    assert FeatureStore(store).mean == FeatureStore(reference).mean
