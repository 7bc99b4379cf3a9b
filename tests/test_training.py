"""Training stage end to end with the smoke preset on a small learnable corpus (three classes of 12
clips: low tones, high tones, white noise; 32 mel bins x 64 frames; 24 train and 12 eval clips) built
once through the real feature stage.

Covers: the AST and a CNN learn (clearly above chance), the run folder and its documented fields,
weight averaging and the checkpoint ensemble, checkpoints reproduced by `evaluate_checkpoint`, exact
resume after a real SIGKILL of `cmkd-pipe train` mid-epoch, refusal to resume another config, the
CLI's one-line errors, `print-config`, and a checkpoint refused on a store with other features.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from cmkd_pipe.cli.app import app
from cmkd_pipe.data_manifests.manifest import Manifest
from cmkd_pipe.pipeline.config import FeatureConfig, Normalization
from cmkd_pipe.pipeline.features import normalize
from cmkd_pipe.pipeline.models.checkpoint import load_checkpoint
from cmkd_pipe.pipeline.stores.feature_store import FeatureStore, create_feature_store
from cmkd_pipe.pipeline.training.averaging import WeightAverage
from cmkd_pipe.pipeline.training.presets import resolve_config
from cmkd_pipe.stages.evaluate import evaluate_checkpoint
from cmkd_pipe.stages.features import run_features
from cmkd_pipe.stages.train import train

from faults import assert_same_runs, resume_position

REPO = Path(__file__).resolve().parents[1]
CONFIG = FeatureConfig(num_mel_bins=32, target_frames=64)  # the smoke preset's features
OTHER = FeatureConfig(num_mel_bins=32, target_frames=48)
CHUNK = 8
CHANCE = 1 / 3
# Models shown to learn. The preset CNN (EfficientNet-B0) is BatchNorm-based: trained from scratch for a
# few dozen steps on 1x2 feature maps, its eval-mode predictions (running statistics) stay near chance
# while its train-mode ones are right, which says nothing about the engine; timm's GroupNorm test
# EfficientNet has no running statistics and learns the task in the same two epochs. The BatchNorm CNN
# runs through the engine below (checkpoints, weight averaging of its buffers).
LEARNERS = ["ast", "timm:test_efficientnet_gn"]
# 12 steps of 8 clips an epoch (the 24 training clips drawn 4 times): two epochs then learn the task
LEARN = ["data.epoch_len=96"]
# resume test: 30 steps an epoch, the resume state saved every 3 steps, reproducible arithmetic
RESUME = ["data.epoch_len=240", "train.checkpoint_every_steps=3", "train.deterministic=true"]
STEPS_PER_EPOCH = 240 // 8


def learnable_clips(make_tone) -> list[dict]:
    """0.7 s clips: class a a tone of 300-600 Hz, b a tone of 2.5-4 kHz, c white noise; every third
    clip of a class is in the eval split."""
    rng = np.random.default_rng(0)
    clips = []
    for c, label in enumerate("abc"):
        for i in range(12):
            seed = 100 * c + i
            if label == "c":
                audio = (0.3 * np.random.default_rng(seed).standard_normal(11200)).astype(np.float32)
            else:
                low, high = (300.0, 600.0) if label == "a" else (2500.0, 4000.0)
                audio = make_tone(rng.uniform(low, high), 0.7, 16000, noise=0.05, seed=seed)
            clips.append({"clip_id": f"{label}{i:02d}", "labels": [label], "split": "eval" if i % 3 == 0 else "train",
                          "audio": audio})
    return clips


@pytest.fixture(scope="module")
def data(tmp_path_factory, corpus_writer, make_tone, scheduler) -> dict:
    """The corpus through the feature stage twice (smoke features, and 48 frames), plus an unfinished store."""
    root = tmp_path_factory.mktemp("training")
    manifest_dir = corpus_writer(root / "corpus", learnable_clips(make_tone))
    for name, config in (("features.zarr", CONFIG), ("other.zarr", OTHER)):
        run_features(manifest_dir, root / name, config=config, chunk_clips=CHUNK, scheduler=scheduler,
                     progress=False)
    create_feature_store(root / "incomplete.zarr", Manifest.load(manifest_dir), CONFIG, CHUNK)
    return {"root": root, "store": root / "features.zarr", "other": root / "other.zarr",
            "incomplete": root / "incomplete.zarr"}


@pytest.fixture(scope="module")
def trained(data):
    """`trained(arch) -> (run folder, results)`: one smoke-preset run per model, made on first use (the
    learners with longer epochs)."""
    runs: dict[str, tuple[Path, dict]] = {}

    def get(arch: str) -> tuple[Path, dict]:
        if arch not in runs:
            out = data["root"] / f"run-{arch.replace(':', '-')}"
            overrides = LEARN if arch in LEARNERS else []
            epochs: list[dict[str, torch.Tensor]] = []  # the states the running weight average is fed
            add = WeightAverage.add

            def recording(self, state, name=None):
                epochs.append({k: v.detach().clone() for k, v in state.items()})
                add(self, state, name)

            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(WeightAverage, "add", recording)
                results = train(data["store"], arch, out, preset="smoke", overrides=overrides, progress=False)
            torch.save(epochs, data["root"] / f"wa-epochs-{arch.replace(':', '-')}.pt")
            runs[arch] = out, results
        return runs[arch]

    return get


def checkpoint_scores(path: Path, store: FeatureStore, rows: np.ndarray, state: dict | None = None) -> np.ndarray:
    """Class probabilities of a checkpoint (with other weights `state`, if given) on store rows, computed
    here from the checkpoint's own parts."""
    model, meta = load_checkpoint(path)
    if state is not None:
        model.load_state_dict(state)
    x = normalize(torch.from_numpy(store.read(rows, np.float32)), Normalization.from_dict(meta["normalization"]))
    with torch.no_grad():
        return torch.softmax(model.eval()(x), dim=-1).numpy()


def accuracy(scores: np.ndarray, targets: np.ndarray) -> float:
    return float(np.mean(scores.argmax(1) == targets.argmax(1)))


def state_dict(path: Path, key: str) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)[key]


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


# ------------------------------------------------------------------------------------ learning

@pytest.mark.parametrize("arch", LEARNERS)
def test_two_epochs_beat_chance(trained, arch):
    _, results = trained(arch)
    assert results["n_test"] == 12 and results["epochs"] == 2
    for name in ("last", "wa", "ensemble"):
        assert results[name]["accuracy"] >= CHANCE + 0.4, (name, results[name])


# ------------------------------------------------------------------------------------ run folder

def test_run_folder_holds_the_documented_files(trained, data):
    out, results = trained("ast")
    for name in ("results.json", "metrics.jsonl", "metrics.csv", "curves.png", "config.yaml", "final.pt",
                 "best.pt", "wa.pt", "test_predictions.npz", "checkpoints/last.pt"):
        assert (out / name).is_file(), name
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert yaml.safe_load((out / "config.yaml").read_text()) == resolve_config("smoke", LEARN)

    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
    assert (results["arch"], results["metric"], results["multilabel"]) == ("ast", "accuracy", False)
    assert results["final"] == "wa" and results["wa"]["epochs"] == [1, 2]
    assert results["best"]["epoch"] in (1, 2) and "accuracy" in results["best"]
    assert results["run"] == {"name": "run-ast", "group": data["root"].name, "role": "baseline"}

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for row in rows:
        assert {"train_loss", "train_task", "lr", "epoch_seconds", "data_fraction", "val_accuracy",
                "test_accuracy"} <= set(row)
        assert 0.0 <= row["data_fraction"] <= 1.0 and np.isfinite(row["train_loss"])
    assert rows[-1]["test_accuracy"] == results["last"]["accuracy"]
    assert max(r["val_accuracy"] for r in rows) == results["best"]["accuracy"]  # val = test split here

    store = FeatureStore(data["store"])
    predictions = np.load(out / "test_predictions.npz")
    assert set(predictions.files) == {"rows", "clip_ids", "scores", "targets"}
    assert np.array_equal(predictions["rows"], store.select("eval"))
    assert sorted(predictions["clip_ids"]) == [f"{c}{i:02d}" for c in "abc" for i in range(0, 12, 3)]
    assert predictions["scores"].shape == (12, 3)
    np.testing.assert_allclose(predictions["scores"].sum(axis=1), 1.0, rtol=1e-5)
    assert np.array_equal(predictions["targets"], store.targets[predictions["rows"]])
    assert accuracy(predictions["scores"], predictions["targets"]) == results["wa"]["accuracy"]


@pytest.mark.parametrize("arch", ["ast", "cnn"])
def test_weight_averaging_and_ensemble(trained, data, arch):
    out, results = trained(arch)
    epochs = torch.load(data["root"] / f"wa-epochs-{arch}.pt", weights_only=True)  # epoch 1 and 2 states
    assert len(epochs) == 2 and not list((out / "checkpoints").glob("epoch_*"))  # no file per epoch
    wa = state_dict(out / "wa.pt", "state_dict")
    assert wa.keys() == epochs[0].keys()
    for name, value in wa.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, (epochs[0][name] + epochs[1][name]) / 2, rtol=0, atol=1e-6)
        else:  # BatchNorm's num_batches_tracked counts steps: taken from the last epoch
            assert torch.equal(value, epochs[1][name]) and not torch.equal(value, epochs[0][name])
    assert_same_tensors(state_dict(out / "final.pt", "state_dict"), wa)
    # the checkpoint ensemble averages the per-epoch test predictions of the epoch-end models
    store = FeatureStore(data["store"])
    rows = store.select("eval")
    mean = np.mean([checkpoint_scores(out / "final.pt", store, rows, state) for state in epochs], axis=0)
    assert accuracy(mean, store.targets[rows]) == results["ensemble"]["accuracy"]


@pytest.mark.parametrize("arch", ["ast", "cnn"])
def test_checkpoints_reproduce_the_reported_metrics(trained, data, arch):
    out, results = trained(arch)
    model, meta = load_checkpoint(out / "final.pt")
    assert meta["extra"]["arch"] == arch and meta["extra"]["preset"] == "smoke"
    assert meta["feature_config"] == CONFIG.to_dict() and model.n_classes == 3
    store = FeatureStore(data["store"])
    assert meta["normalization"] == store.normalization(2.0).to_dict()
    for checkpoint, reported in (("final.pt", "wa"), ("best.pt", "best")):
        metrics = evaluate_checkpoint(out / checkpoint, data["store"], "eval", device="cpu")
        assert metrics["n_clips"] == results["n_test"]
        assert metrics["accuracy"] == results[reported]["accuracy"], checkpoint
    rows = store.select("eval")
    last = state_dict(out / "checkpoints" / "last.pt", "model")  # the last epoch's weights, in the resume state
    assert accuracy(checkpoint_scores(out / "final.pt", store, rows, last), store.targets[rows]) == \
        results["last"]["accuracy"]
    saved = np.load(out / "test_predictions.npz")["scores"]
    np.testing.assert_allclose(checkpoint_scores(out / "final.pt", store, rows), saved, atol=1e-5)


def test_without_the_ensemble_the_test_split_is_scored_only_at_the_end(data, tmp_path):
    out = tmp_path / "no-ensemble"
    results = train(data["store"], "ast", out, preset="smoke", progress=False,
                    overrides=[*LEARN, "average.ensemble=false", "data.val=train",  # validation apart from test
                               "train.epochs=3", "eval.every_epochs=2"])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert not any(k.startswith("test_") for row in rows for k in row) and "ensemble" not in results
    validated = {row["epoch"]: row["val_accuracy"] for row in rows if "val_accuracy" in row}
    assert sorted(validated) == [2, 3]  # every 2nd epoch and the last
    assert results["best"]["epoch"] == max(validated, key=lambda epoch: (validated[epoch], -epoch))
    for checkpoint, reported in (("best.pt", "best"), ("final.pt", "wa")):  # scored from the saved models
        metrics = evaluate_checkpoint(out / checkpoint, data["store"], "eval", device="cpu")
        assert metrics["accuracy"] == results[reported]["accuracy"], checkpoint
    store = FeatureStore(data["store"])
    eval_rows = store.select("eval")
    last = state_dict(out / "checkpoints" / "last.pt", "model")
    assert accuracy(checkpoint_scores(out / "final.pt", store, eval_rows, last), store.targets[eval_rows]) == \
        results["last"]["accuracy"]


def test_a_checkpoint_is_refused_on_a_store_with_other_features(trained, data):
    out, _ = trained("ast")
    with pytest.raises(ValueError, match=r"different features: target_frames: 64 != 48"):
        evaluate_checkpoint(out / "final.pt", data["other"], device="cpu")
    result = CliRunner().invoke(app, ["evaluate", str(out / "final.pt"), "--features", str(data["other"])])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "error: checkpoint and data use different features: target_frames: 64 != 48 (checkpoint != data)"]


# ------------------------------------------------------------------------------------ resume

def train_command(store: Path, out: Path, *extra: str) -> list[str]:
    args = [sys.executable, "-m", "cmkd_pipe.cli.app", "train", "--features", str(store), "--out", str(out),
            "--model", "ast", "--preset", "smoke"]
    for item in RESUME:
        args += ["--set", item]
    return [*args, *extra]


def kill_mid_epoch_and_resume(store: Path, out: Path, options: dict) -> tuple[int, int, str]:
    """Run `cmkd-pipe train`, SIGKILL it once its resume state lies within an epoch, rerun it with
    --resume; return the (epoch, position) it resumed from and the rerun's stderr."""
    killed = subprocess.Popen(train_command(store, out), stderr=subprocess.DEVNULL, **options)
    state_path = out / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 240
    try:
        while True:
            seen = resume_position(state_path)
            if seen is not None and seen[1] > 0:
                killed.send_signal(signal.SIGKILL)
                break
            assert killed.poll() is None, "the run ended before a mid-epoch state was seen"
            assert time.monotonic() < deadline, "no mid-epoch resume state appeared"
            time.sleep(0.005)
    finally:
        killed.kill()
        killed.wait()
    assert killed.returncode == -signal.SIGKILL
    assert not (out / "results.json").exists()
    epoch, position = resume_position(state_path)
    assert 0 < position < STEPS_PER_EPOCH * 8
    resumed = subprocess.run(train_command(store, out, "--resume"), stderr=subprocess.PIPE, text=True, **options)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    return epoch, position, resumed.stderr


@pytest.mark.slow
def test_resume_after_a_kill_equals_an_uninterrupted_run(data, tmp_path):
    """One thread and deterministic algorithms make the arithmetic reproducible, so the comparison is exact."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    quiet = {"cwd": REPO, "env": env, "stdout": subprocess.DEVNULL}
    reference = subprocess.Popen(train_command(data["store"], tmp_path / "reference"),
                                 stderr=subprocess.DEVNULL, **quiet)
    try:
        epoch, position, resumed = kill_mid_epoch_and_resume(data["store"], tmp_path / "resumed", quiet)
        assert reference.wait(timeout=240) == 0
    finally:
        reference.kill()
        reference.wait()
    # the first progress bar starts at the step after the saved position: the run continued, not restarted
    first_bar = re.search(rf"epoch (\d)/2:.*?(\d+)/{STEPS_PER_EPOCH} ", resumed)
    assert first_bar and (int(first_bar[1]), int(first_bar[2])) == (epoch + 1, position // 8)

    ref, res = tmp_path / "reference", tmp_path / "resumed"
    assert_same_runs(ref, res)
    assert torch.load(res / "checkpoints/last.pt", weights_only=False)["step"] == 2 * STEPS_PER_EPOCH


def test_resume_refuses_another_config(trained, data, tmp_path):
    out, _ = trained("ast")
    (tmp_path / "checkpoints").mkdir()
    shutil.copy(out / "checkpoints" / "last.pt", tmp_path / "checkpoints" / "last.pt")
    with pytest.raises(ValueError, match="another model or config; resume with the same settings"):
        train(data["store"], "ast", tmp_path, preset="smoke", overrides=[*LEARN, "optim.lr.ast=1e-4"], resume=True,
              progress=False)
    result = CliRunner().invoke(app, ["train", "--features", str(data["store"]), "--out", str(tmp_path),
                                      "--model", "ast", "--preset", "smoke", "--resume"])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "was written by a run with another model or config" in result.stderr


# ------------------------------------------------------------------------------------ CLI

@pytest.mark.parametrize("store, extra, message", [
    ("missing.zarr", [], "missing.zarr: no Zarr store here; run the stage that writes it first"),
    ("incomplete.zarr", [], "incomplete.zarr: store is incomplete (5 of 5 chunks not done)"),
    ("other.zarr", [], "config features.target_frames=64 but the feature store"),
    ("features.zarr", ["--set", "data.train=training"], "split spec 'training': unknown split(s) ['training']"),
])
def test_train_cli_bad_input_is_one_line_and_exit_1(data, tmp_path, store, extra, message):
    result = CliRunner().invoke(app, ["train", "--features", str(data["root"] / store), "--out", str(tmp_path / "run"),
                                      "--model", "ast", "--preset", "smoke", *extra])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr


def test_print_config_shows_overrides():
    result = CliRunner().invoke(app, ["print-config", "--preset", "smoke", "--set", "optim.lr.ast=1e-5"])
    assert result.exit_code == 0, result.output
    config = yaml.safe_load(result.stdout)
    assert config["optim"]["lr"] == {"cnn": 1e-3, "ast": 1e-5}
    assert config == resolve_config("smoke", ["optim.lr.ast=1e-5"])
    picked = yaml.safe_load(CliRunner().invoke(app, ["print-config", "--preset", "smoke", "--model", "ast",
                                                     "--set", "optim.lr.ast=1e-5"]).stdout)
    assert picked["optim"]["lr"] == 1e-5 and picked["model"]["ast"]["embed_dim"] == 16
