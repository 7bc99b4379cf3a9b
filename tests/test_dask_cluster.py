"""The Dask stages on a real cluster: a `dask scheduler` and `dask worker` processes on loopback.

The feature stage and the teacher-logits stage run through `--scheduler tcp://127.0.0.1:PORT`; in
each, one worker is SIGKILLed once some chunks are done. The stage still completes, every chunk is
marked done, and the store equals (bitwise) a run of the same settings on a LocalCluster (the session's).
A fresh worker joins between the two stages, as on a cluster where workers come and go.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import zarr

from faults import REPO, chunk_markers, cli, kill_group, start, stage_env, tail
from cmkd_pipe.pipeline.config import FeatureConfig
from cmkd_pipe.pipeline.stores.feature_store import FeatureStore
from cmkd_pipe.stages.features import run_features
from cmkd_pipe.stages.teacher_logits import run_teacher_logits

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not Path("/proc/self/stat").is_file(),
                                                   reason="needs Linux /proc to watch process groups")]

CONFIG = FeatureConfig(num_mel_bins=32, target_frames=64)
N_CLIPS = 24
DASK = Path(sys.executable).with_name("dask")
TEACHER = {"arch": "cnn", "variant": "efficientnet_b0", "pooling": "mean"}


@dataclass
class Cluster:
    """A scheduler and its workers, each a process group of its own."""

    address: str
    folder: Path
    workers: dict[str, subprocess.Popen] = field(default_factory=dict)

    def add_worker(self, name: str) -> subprocess.Popen:
        """Start `dask worker` (one thread, no nanny, so SIGKILL ends it for good) from the repository."""
        self.workers[name] = start([str(DASK), "worker", self.address, "--nthreads", "1", "--no-nanny",
                                    "--no-dashboard", "--name", name, "--local-directory",
                                    str(self.folder / name)], self.folder / f"worker-{name}.log",
                                   env=stage_env(), cwd=REPO)
        return self.workers[name]

    def wait_for_workers(self, n: int) -> None:
        from distributed import Client

        with Client(self.address, timeout="60s") as client:
            client.wait_for_workers(n, timeout=120)
            assert len(client.scheduler_info(n_workers=-1)["workers"]) == n


@pytest.fixture
def cluster(tmp_path) -> Iterator[Cluster]:
    scheduler_file = tmp_path / "scheduler.json"
    scheduler = start([str(DASK), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                       "--scheduler-file", str(scheduler_file)], tmp_path / "scheduler.log", cwd=REPO)
    running = Cluster("", tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not scheduler_file.is_file():
            assert scheduler.poll() is None, tail(tmp_path / "scheduler.log")
            assert time.monotonic() < deadline, "the scheduler wrote no scheduler file"
            time.sleep(0.1)
        running.address = json.loads(scheduler_file.read_text())["address"]
        assert running.address.startswith("tcp://127.0.0.1:")
        yield running
    finally:
        for worker in running.workers.values():
            kill_group(worker)
        kill_group(scheduler)


def run_killing_a_worker(command: list[str], store: Path, cluster: Cluster, victim: str, log: Path) -> int:
    """Run a stage command; SIGKILL worker `victim` once 2 chunks are done; return chunks done by then."""
    stage = start(command, log)
    try:
        deadline = time.monotonic() + 300
        while chunk_markers(store) < 2:
            assert stage.poll() is None, f"the stage ended before the kill:\n{tail(log)}"
            assert time.monotonic() < deadline, f"no chunk finished in time:\n{tail(log)}"
            time.sleep(0.005)
        assert cluster.workers[victim].poll() is None
        kill_group(cluster.workers[victim])
        done_at_kill = chunk_markers(store)
        assert stage.wait(timeout=300) == 0, tail(log)
    finally:
        kill_group(stage)
    return done_at_kill


def bits(store: Path, array: str) -> np.ndarray:
    values = np.asarray(zarr.open_group(store=str(store), mode="r")[array][:])
    return values.view(np.uint16 if values.dtype == np.float16 else np.uint32)


def assert_every_chunk_done(store: Path) -> None:
    group = zarr.open_group(store=str(store), mode="r")
    assert np.asarray(group["chunk_done"][:]).tolist() == [1] * N_CLIPS and group.attrs["complete"] is True


def test_stages_on_a_cluster_survive_a_killed_worker(tmp_path, cluster, corpus_writer, make_tone, dask_cluster,
                                                    random_teacher):
    clips = [{"clip_id": f"clip{i:02d}", "labels": ["abc"[i % 3]], "split": "train" if i % 4 else "eval",
              "sr": 44100, "audio": make_tone(300.0 + 37 * i, 4.0, 44100, 0.3, channels=2, noise=0.1, seed=i)}
             for i in range(N_CLIPS)]
    manifest = corpus_writer(tmp_path / "corpus", clips)
    cluster.add_worker("a")
    cluster.add_worker("b")
    cluster.wait_for_workers(2)

    features = tmp_path / "features.zarr"
    done = run_killing_a_worker(
        cli("features", "--manifest", str(manifest), "--out", str(features), "--target-frames", "64",
            "--num-mel-bins", "32", "--chunk-clips", "1", "--scheduler", cluster.address),
        features, cluster, "a", tmp_path / "features.log")
    assert done < N_CLIPS, "worker a was killed after the last chunk"
    assert_every_chunk_done(features)

    cluster.add_worker("c")
    cluster.wait_for_workers(2)
    teacher = tmp_path / "teacher.pt"
    random_teacher(teacher, FeatureStore(features), TEACHER, weight_std=None)
    logits = tmp_path / "logits.zarr"
    view_args = ["--views", "4", "--freq-mask", "4", "--time-mask", "8", "--mixup-rate", "0.5"]
    done = run_killing_a_worker(
        cli("teacher-logits", "--features", str(features), "--checkpoint", str(teacher), "--out", str(logits),
            *view_args, "--chunk-clips", "1", "--device", "cpu", "--scheduler", cluster.address),
        logits, cluster, "b", tmp_path / "logits.log")
    assert done < N_CLIPS, "worker b was killed after the last chunk"
    assert_every_chunk_done(logits)

    local_features, local_logits = tmp_path / "local-features.zarr", tmp_path / "local-logits.zarr"
    run_features(manifest, local_features, config=CONFIG, chunk_clips=1, scheduler=dask_cluster, progress=False)
    assert np.array_equal(bits(features, "fbank"), bits(local_features, "fbank"))
    for name in ("valid_frames", "ok", "chunk_stats"):
        np.testing.assert_array_equal(zarr.open_group(store=str(features), mode="r")[name][:],
                                      zarr.open_group(store=str(local_features), mode="r")[name][:])
    run_teacher_logits(features, teacher, local_logits, views=4, freq_mask=4, time_mask=8, mixup_rate=0.5,
                       chunk_clips=1, device="cpu", scheduler=dask_cluster, progress=False)
    assert np.array_equal(bits(logits, "logits"), bits(local_logits, "logits"))
