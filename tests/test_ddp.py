"""DDP on two CPU processes (gloo): `cmkd-pipe train` under torchrun with the smoke preset.

The CLI runs through a small launcher that wraps `Trainer.fit` to write, on every rank, a hash of the
weights the rank ended with; the test checks that both ranks hold the same weights and that they are
the ones rank 0 saved. Only rank 0 writes the run folder, and its test metrics come from predictions
gathered from both ranks: every test clip is scored, as a single process scores it.

Exact DDP resume (slow): a 2-process run SIGKILLed (the whole process group) once its resume state lies
within an epoch, then rerun with --resume, ends with the weights, optimiser state, metrics and
predictions of an uninterrupted 2-process run, bit for bit: every rank redraws its own augmentation
after the resume (the draws are functions of seed, epoch, step and rank).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cmkd_pipe.pipeline.config import FeatureConfig, Normalization
from cmkd_pipe.pipeline.features import normalize
from cmkd_pipe.pipeline.models.checkpoint import load_checkpoint
from cmkd_pipe.pipeline.stores.feature_store import FeatureStore
from cmkd_pipe.stages.evaluate import evaluate_checkpoint
from cmkd_pipe.stages.features import run_features

from faults import assert_same_runs, kill_tree, resume_position, start, tail

pytestmark = pytest.mark.slow  # end to end: torchrun with two ranks

REPO = Path(__file__).resolve().parents[1]
CONFIG = FeatureConfig(num_mel_bins=32, target_frames=64)  # the smoke preset's features
LAUNCHER = '''\
"""cmkd-pipe with Trainer.fit wrapped to write the rank's final weights hash to OUT/weights-rank<R>.sha256."""
import sys

from cmkd_pipe.pipeline.training import engine
from test_ddp import weights_hash

fit = engine.Trainer.fit


def fit_and_hash(self, *args, **kwargs):
    outcome = fit(self, *args, **kwargs)
    (self.out / f"weights-rank{self.dist.rank}.sha256").write_text(weights_hash(self.core.state_dict()))
    return outcome


engine.Trainer.fit = fit_and_hash
from cmkd_pipe.cli.app import main

sys.argv[0] = "cmkd-pipe"
main()
'''


def weights_hash(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the names and bytes of a state dict's tensors."""
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, corpus_writer, make_tone, scheduler) -> dict:
    """A 3-class corpus (18 train clips, 9 test clips: the ranks score 5 and 4) and a 2-process run on it."""
    root = tmp_path_factory.mktemp("ddp")
    clips = [{"clip_id": f"{label}{i}", "labels": [label], "split": "eval" if i % 3 == 0 else "train",
              "audio": make_tone(300.0 * (c + 1) * (1 + 0.05 * i), 0.7, 16000, noise=0.05, seed=9 * c + i)}
             for c, label in enumerate("abc") for i in range(9)]
    manifest_dir = corpus_writer(root / "corpus", clips)
    store = root / "features.zarr"
    run_features(manifest_dir, store, config=CONFIG, chunk_clips=8, scheduler=scheduler, progress=False)
    launcher = root / "launch_cmkd_pipe.py"
    launcher.write_text(LAUNCHER)
    out = root / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(launcher),
               "train", "--features", str(store), "--out", str(out), "--model", "ast", "--preset", "smoke",
               "--device", "cpu", "--set", "data.epoch_len=64"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]), "OMP_NUM_THREADS": "1",
           "LOGLEVEL": "WARNING"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return {"store": store, "out": out}


def test_both_ranks_end_with_the_weights_rank_0_saved(ddp_run):
    out = ddp_run["out"]
    hashes = [(out / f"weights-rank{rank}.sha256").read_text() for rank in (0, 1)]
    assert hashes[0] == hashes[1]
    # the resume state holds rank 0's weights after the last step
    saved = torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)["model"]
    assert weights_hash(saved) == hashes[0]


def test_rank_0_alone_writes_the_run_folder(ddp_run):
    out = ddp_run["out"]
    for name in ("results.json", "final.pt", "best.pt", "wa.pt", "curves.png", "test_predictions.npz"):
        assert (out / name).is_file(), name
    assert not list(out.glob(".*tmp*"))
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(row)["epoch"] for row in rows] == [1, 2]
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1  # one logger: one process's file


def test_metrics_come_from_predictions_gathered_from_both_ranks(ddp_run):
    out, store = ddp_run["out"], FeatureStore(ddp_run["store"])
    results = json.loads((out / "results.json").read_text())
    rows = store.select("eval")
    assert results["n_test"] == len(rows) == 9
    predictions = np.load(out / "test_predictions.npz")
    assert np.array_equal(predictions["rows"], rows)
    np.testing.assert_allclose(predictions["scores"].sum(axis=1), 1.0, rtol=1e-5)  # no clip left unscored
    single = evaluate_checkpoint(out / "final.pt", ddp_run["store"], "eval", device="cpu")
    assert results["final"] == "wa" and single["accuracy"] == results["wa"]["accuracy"]
    model, meta = load_checkpoint(out / "final.pt")
    x = normalize(torch.from_numpy(store.read(rows, np.float32)), Normalization.from_dict(meta["normalization"]))
    with torch.no_grad():
        alone = torch.softmax(model.eval()(x), dim=-1).numpy()
    np.testing.assert_allclose(predictions["scores"], alone, atol=1e-5)


# ------------------------------------------------------------------------------ exact resume

RESUME = ["data.epoch_len=192", "train.checkpoint_every_steps=2", "train.deterministic=true"]  # 12 steps/epoch


def ddp_train(store: Path, out: Path, *extra: str) -> list[str]:
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
            str(REPO / "cli" / "app.py"), "train", "--features", str(store), "--out", str(out), "--model", "ast",
            "--preset", "smoke", "--device", "cpu"]
    for item in RESUME:
        args += ["--set", item]
    return [*args, *extra]


def finish(process: subprocess.Popen, log: Path) -> None:
    try:
        code = process.wait(timeout=400)
    except subprocess.TimeoutExpired:
        kill_tree(process)
        raise
    assert code == 0, tail(log)


def test_ddp_resume_after_a_kill_equals_an_uninterrupted_run(ddp_run, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "LOGLEVEL": "WARNING"}
    store, ref, res = ddp_run["store"], tmp_path / "reference", tmp_path / "resumed"
    reference = start(ddp_train(store, ref), tmp_path / "reference.log", env=env)
    try:
        killed = start(ddp_train(store, res), tmp_path / "killed.log", env=env)
        try:
            deadline = time.monotonic() + 300
            while (seen := resume_position(res / "checkpoints" / "last.pt")) is None or seen[1] == 0:
                assert killed.poll() is None, "the run ended before a mid-epoch state was seen:\n" + \
                    tail(tmp_path / "killed.log")
                assert time.monotonic() < deadline, "no mid-epoch resume state appeared"
                time.sleep(0.005)
        finally:
            kill_tree(killed)  # torchrun and both ranks (torchrun starts them in sessions of their own)
        assert not (res / "results.json").exists()
        epoch, position = resume_position(res / "checkpoints" / "last.pt")
        assert 0 < position < 96
        finish(start(ddp_train(store, res, "--resume"), tmp_path / "resumed.log", env=env), tmp_path / "resumed.log")
        finish(reference, tmp_path / "reference.log")
    finally:
        kill_tree(reference)
    # rank 0's first progress bar starts at the step after the saved position: the run continued
    first_bar = re.search(r"epoch (\d)/2:.*?(\d+)/12 ", (tmp_path / "resumed.log").read_text())
    assert first_bar and (int(first_bar[1]), int(first_bar[2])) == (epoch + 1, position // 8)
    assert_same_runs(ref, res)
