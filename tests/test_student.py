"""Stage two end to end on a learnable tiny corpus (60 tones, 3 classes, 32 mel bins x 64 frames, the
`smoke` preset): cached-logit and online-teacher students, the exact replay of teacher views, λ = 1
against a plain run, the refusals of mismatched logit stores, KD learning, and the `kd-sweep` command.

The teacher is a tiny AST trained for two epochs; its logits are cached with 1 and with 3 views. The
feature and logits stages run in process (the session's synchronous `scheduler`).
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
import yaml
import zarr
from typer.testing import CliRunner

from cmkd_pipe.cli.app import app
from cmkd_pipe.cli.sweep import register as register_sweep
from cmkd_pipe.pipeline.augment import augment_batch
from cmkd_pipe.pipeline.config import FeatureConfig, Normalization
from cmkd_pipe.pipeline.features import normalize
from cmkd_pipe.pipeline.models.checkpoint import load_checkpoint
from cmkd_pipe.pipeline.stores.chunk_cache import ChunkCache
from cmkd_pipe.pipeline.stores.feature_store import FeatureStore
from cmkd_pipe.pipeline.stores.logits_store import LogitsStore
from cmkd_pipe.pipeline.stores.integrity import reseal
from cmkd_pipe.pipeline.training.distributed import DistInfo
from cmkd_pipe.pipeline.training.logs import load_metrics
from cmkd_pipe.pipeline.training.presets import resolve_config
from cmkd_pipe.pipeline.training.teachers import CachedTeacher, NoTeacher, OnlineTeacher
from cmkd_pipe.stages.features import run_features
from cmkd_pipe.stages.teacher_logits import run_teacher_logits
from cmkd_pipe.stages.train import train

CONFIG = FeatureConfig(num_mel_bins=32, target_frames=64)  # the smoke preset's front-end
CHUNK = 8
SPLITS = ("train", "train", "train", "val", "eval")  # per triple of clips (one per class): 36 / 12 / 12
BASE = ["data.val=val", "data.test=eval"]  # validate on val, report on eval
FAST = [*BASE, "train.epochs=1", "average.wa_start_epoch=null", "average.wa_end_epoch=null",
        "average.ensemble=false"]
VIEWS = {"freq_mask": 4, "time_mask": 8, "mixup_rate": 0.5}
runner = CliRunner()


def step_inputs(source, store: FeatureStore, rows: np.ndarray, seed: int):
    """A source's step input for `rows`, as a training step gets it: its CPU half (the loader's work),
    then its device half."""
    batch = source.plan().prepare(store, ChunkCache(store.fbank, store.chunk_clips), rows,
                                  torch.Generator().manual_seed(seed))
    return batch, source.inputs(batch)


def tone_clips(make_tone, rename: dict[int, str] | None = None, classes: str = "abc") -> list[dict]:
    """Three classes of tones far apart in frequency (±15 %), 0.5–0.8 s long (64 frames = 0.64 s)."""
    clips = []
    for i in range(60):
        c = i % 3
        freq = (300.0, 1500.0, 5000.0)[c] * (1 + 0.15 * np.random.default_rng(i).uniform(-1, 1))
        clips.append({"clip_id": (rename or {}).get(i, f"c{i:02d}"), "labels": [classes[c]],
                      "split": SPLITS[(i // 3) % 5], "audio": make_tone(freq, 0.5 + 0.005 * i, 16000,
                                                                         noise=0.05, seed=i)})
    return clips


@pytest.fixture(scope="module")
def world(tmp_path_factory, corpus_writer, make_tone, scheduler) -> dict:
    """Features, a two-epoch tiny-AST teacher, and its logits stores with 1 and 3 views."""
    root = tmp_path_factory.mktemp("world")
    manifest_dir = corpus_writer(root / "corpus", tone_clips(make_tone))
    features = root / "features.zarr"
    run_features(manifest_dir, features, config=CONFIG, chunk_clips=CHUNK, scheduler=scheduler, progress=False)
    teacher = root / "teacher"
    train(features, "ast", teacher, preset="smoke", overrides=BASE, progress=False)
    stores = {}
    for views in (1, 3):
        stores[views] = root / f"views{views}.zarr"
        run_teacher_logits(features, teacher / "final.pt", stores[views], views=views, **VIEWS, batch_size=16,
                           scheduler=scheduler, progress=False)
    return {"root": root, "manifest_dir": manifest_dir, "features": features, "store": FeatureStore(features),
            "teacher": teacher / "final.pt", "views1": stores[1], "views3": stores[3]}


def invoke(*args: str, target: typer.Typer = app):
    return runner.invoke(target, [str(a) for a in args])


def probabilities(logits: np.ndarray) -> np.ndarray:
    return torch.softmax(torch.from_numpy(np.asarray(logits, dtype=np.float32)), dim=-1).numpy()


def probabilities_t(logits: torch.Tensor) -> torch.Tensor:
    """The KD target at τ = 1 (softmax), as CMKDLoss.teacher_probs gives it for softmax-kl."""
    return torch.softmax(logits.float(), dim=-1)


# ---------------------------------------------------------------- a cached-logit student run

def test_cached_logit_student_records_its_teacher(world):
    """AST teacher -> CNN student (the smoke EfficientNet-B0) on the 3-view store, through the CLI."""
    cached_run = world["root"] / "student-cnn"
    result = invoke("train-student", "--features", world["features"], "--logits", world["views3"], "--out",
                    cached_run, "--model", "cnn", "--preset", "smoke", *[f"--set={s}" for s in BASE])
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.stdout
    results = json.loads((cached_run / "results.json").read_text())
    assert results["run"]["role"] == "student" and results["arch"] == "cnn"
    teacher = results["teacher"]
    assert teacher["arch"] == "ast" and teacher["checkpoint"] == str(world["teacher"].resolve())
    assert teacher["run"] == "teacher" and len(teacher["checkpoint_sha256"]) == 64
    rows = load_metrics(cached_run)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(0.0 <= r["teacher_agreement"] <= 1.0 and r["train_kd"] >= 0.0 for r in rows)

    predictions = np.load(cached_run / "test_predictions.npz")
    store = world["store"]
    rows_test = store.select("eval")
    np.testing.assert_array_equal(predictions["rows"], rows_test)
    cached = np.asarray(LogitsStore(world["views3"]).logits[:, 0])[rows_test]
    np.testing.assert_allclose(predictions["teacher_scores"], probabilities(cached), rtol=0, atol=1e-6)


# ---------------------------------------------------------------- exact replay of the teacher's views

def test_cached_teacher_uses_the_cached_logits_of_the_sampled_view(world):
    """CachedTeacher.inputs on a real batch: viewed rows get the cached teacher probabilities of their view
    and the exact view input (the teacher's forward on it reproduces the cached logits); view-0 rows are the
    clean input with the clean teacher probabilities (with K > 1 views the student sees only cached views)."""
    config = resolve_config("smoke", [*BASE, "augment.mixup_rate=1.0"])
    store = world["store"]
    teacher = CachedTeacher(store, config["augment"], torch.device("cpu"), world["views3"], probabilities_t)
    indices = store.select("train")[:16]
    _, got = step_inputs(teacher, store, indices, 1234)
    x, y, teacher_p = got.x, got.y, got.teacher_p
    raw, labels = store.read(indices), store.targets[indices].astype(np.float32)

    replay = torch.Generator().manual_seed(1234)  # the source's draw order: views, then augment_batch
    view = torch.randint(0, 3, (16,), generator=replay)
    plain = augment_batch(torch.from_numpy(raw), torch.from_numpy(labels),
                          torch.from_numpy(store.valid_frames[indices].astype(np.int64)), config["augment"], replay,
                          keep=view > 0)
    view, perm, lam = view.numpy(), plain.perm, plain.lam
    viewed, clean = np.flatnonzero(view > 0), np.flatnonzero(view == 0)
    assert len(viewed) >= 4 and len(clean) >= 2
    np.testing.assert_array_equal(x[clean].numpy(), raw[clean].astype(np.float32))  # the clean input
    np.testing.assert_array_equal(y[clean].numpy(), labels[clean])
    assert not np.array_equal(plain.x[clean].numpy(), raw[clean])  # which the batch augmentation changed

    cached = np.asarray(LogitsStore(world["views3"]).logits[:])[indices]  # [16, 3, K]
    np.testing.assert_allclose(teacher_p[viewed].numpy(), probabilities(cached[viewed, view[viewed]]),
                               rtol=0, atol=1e-6)
    np.testing.assert_allclose(teacher_p[clean].numpy(), probabilities(cached[clean, 0]), rtol=0, atol=1e-6)

    table = teacher.views.table(indices[viewed], np.asarray(view[viewed]))
    inputs = teacher.views.inputs(indices[viewed], raw[viewed], table)
    partners, view_lam = table.partner, table.lam
    np.testing.assert_array_equal(x[viewed].numpy(), inputs.numpy())
    model, meta = load_checkpoint(world["teacher"])
    with torch.no_grad():
        replayed = model.eval()(normalize(inputs, Normalization.from_dict(meta["normalization"]))).numpy()
    np.testing.assert_allclose(replayed, cached[viewed, view[viewed]], rtol=0, atol=1e-4)
    assert np.abs(cached[viewed, view[viewed]] - cached[viewed, 0]).max() > 1e-3  # views are not the clean input

    targets = store.targets.astype(np.float32)
    has = partners >= 0
    expected = targets[indices[viewed]]
    expected[has] = view_lam[has, None] * expected[has] + (1 - view_lam[has, None]) * targets[partners[has]]
    np.testing.assert_allclose(y[viewed].numpy(), expected, rtol=0, atol=1e-6)
    assert has.any()  # some viewed rows carry a mixup partner


def test_online_teacher_runs_the_teacher_on_the_augmented_input_and_scores_test_rows_lazily(world):
    """OnlineTeacher: the plain augmentation of the batch (same draws as NoTeacher), the frozen teacher's
    forward on exactly that input, and test-row scores computed only when asked for."""
    config = resolve_config("smoke", [*BASE, "augment.mixup_rate=1.0"])
    store, cpu = world["store"], DistInfo(0, 1, torch.device("cpu"))
    teacher = OnlineTeacher(store, config["augment"], cpu, world["teacher"], probabilities_t, batch_size=16,
                            amp=False)
    assert not teacher._scored  # nothing scored while building it
    rows = store.select("train")[:16]
    _, got = step_inputs(teacher, store, rows, 7)
    _, plain = step_inputs(NoTeacher(store, config["augment"], cpu.device), store, rows, 7)
    np.testing.assert_array_equal(got.x.numpy(), plain.x.numpy())
    np.testing.assert_array_equal(got.y.numpy(), plain.y.numpy())
    model, meta = load_checkpoint(world["teacher"])
    with torch.no_grad():
        expected = torch.softmax(model.eval()(normalize(plain.x, Normalization.from_dict(meta["normalization"]))), -1)
    np.testing.assert_allclose(got.teacher_p.numpy(), expected.numpy(), rtol=0, atol=1e-6)
    rows = store.select("eval")
    scores = teacher.probabilities(rows)
    cached = np.asarray(LogitsStore(world["views1"]).logits[:, 0])[rows]
    np.testing.assert_allclose(scores, probabilities(cached), rtol=0, atol=1e-5)
    assert teacher.probabilities(rows) is scores  # kept after the first call


# ---------------------------------------------------------------- λ = 1 is a plain run

def test_lam_one_student_equals_a_plain_run(world):
    """With kd.lam = 1 the KD term has weight 0, so a student run on a 1-view store (whose sampling
    draws nothing extra) is the plain run, bit for bit, mixup and SpecAugment included."""
    root = world["root"]
    plain = train(world["features"], "ast", root / "plain", preset="smoke", overrides=BASE, progress=False)
    student = train(world["features"], "ast", root / "lam-one", preset="smoke", overrides=[*BASE, "kd.lam=1.0"],
                    logits=str(world["views1"]), progress=False)
    assert (plain["run"]["role"], student["run"]["role"]) == ("baseline", "student")
    for name in ("last", "best", "wa", "ensemble"):
        assert plain[name] == student[name]
    a, b = torch.load(root / "plain" / "final.pt"), torch.load(root / "lam-one" / "final.pt")
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    np.testing.assert_array_equal(np.load(root / "plain" / "test_predictions.npz")["scores"],
                                  np.load(root / "lam-one" / "test_predictions.npz")["scores"])
    plain_rows, student_rows = load_metrics(root / "plain"), load_metrics(root / "lam-one")
    assert [r["train_loss"] for r in plain_rows] == [r["train_loss"] for r in student_rows]
    assert all(r["train_kd"] > 0 for r in student_rows)  # the KD term was computed, with weight 0


# ---------------------------------------------------------------- online teacher

def test_online_teacher_student_records_the_teacher(world):
    out = world["root"] / "online"
    result = invoke("train-student", "--features", world["features"], "--teacher", world["teacher"], "--out", out,
                    "--model", "ast", "--preset", "smoke", *[f"--set={s}" for s in FAST])
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert results["run"]["role"] == "student"
    assert results["teacher"]["checkpoint"] == str(world["teacher"]) and results["teacher"]["arch"] == "ast"
    assert 0.0 <= load_metrics(out)[0]["teacher_agreement"] <= 1.0
    online = np.load(out / "test_predictions.npz")["teacher_scores"]
    cached = np.asarray(LogitsStore(world["views1"]).logits[:, 0])[world["store"].select("eval")]
    np.testing.assert_allclose(online, probabilities(cached), rtol=0, atol=1e-5)  # same teacher, same clips


# ---------------------------------------------------------------- refusals

@pytest.fixture(scope="module")
def mismatched(world, tmp_path_factory, corpus_writer, make_tone, scheduler) -> dict[str, Path]:
    """Feature stores the logits stores were not computed from, and broken copies of the 1-view store."""
    root = tmp_path_factory.mktemp("mismatched")
    out = {"settings": root / "settings.zarr", "renamed": root / "renamed.zarr", "vocabulary": root / "vocab.zarr"}
    run_features(world["manifest_dir"], out["settings"], config=FeatureConfig(num_mel_bins=32, target_frames=64,
                                                                              frame_length_ms=20.0),
                 chunk_clips=CHUNK, scheduler=scheduler, progress=False)
    for name, clips in (("renamed", tone_clips(make_tone, rename={6: "renamed"})),
                        ("vocabulary", tone_clips(make_tone, classes="abx"))):
        manifest_dir = corpus_writer(root / name, clips, classes=tuple(sorted({c["labels"][0] for c in clips})))
        run_features(manifest_dir, out[name], config=CONFIG, chunk_clips=CHUNK, scheduler=scheduler, progress=False)

    out["incomplete"] = shutil.copytree(world["views1"], root / "incomplete.zarr")
    group = zarr.open_group(store=str(out["incomplete"]), mode="r+")
    group["chunk_done"][1] = 0  # what a killed teacher-logits run leaves
    group.attrs["complete"] = False
    out["truncated"] = shutil.copytree(world["views1"], root / "truncated.zarr")
    chunk_file = out["truncated"] / "logits" / "c" / "1" / "0" / "0"
    chunk_file.write_bytes(chunk_file.read_bytes()[:10])
    return out


@pytest.mark.parametrize("features, logits, message", [
    pytest.param("settings", "views1", r"logits store does not match: feature store differs \(fingerprint \w+ != "
                 r"\w+: other manifest or feature settings\)\. Recompute it", id="other feature settings"),
    pytest.param("renamed", "views1", r"clip ids differ \(60 vs 60 clips; first difference at row \d+: 'c06' vs "
                 r"'renamed'\)", id="other clip ids"),
    pytest.param("vocabulary", "views1", r"label vocabulary differs at index 2: 'c' vs 'x'", id="other vocabulary"),
    pytest.param("features", "incomplete", r"store is incomplete \(1 of 8 chunks not done\); rerun",
                 id="incomplete store"),
    pytest.param("features", "truncated", r"chunk 1 \(clips 8-15\): data file logits/c/1/0/0 is truncated or altered .*; rerun `cmkd-pipe "
                 r"teacher-logits` with the same arguments",
                 id="truncated chunk"),
])
def test_mismatched_logits_are_refused_with_what_differs(world, mismatched, tmp_path, features, logits, message):
    paths = {**world, **mismatched}
    result = invoke("train-student", "--features", paths[features], "--logits", paths[logits], "--out",
                    tmp_path / "run", "--model", "ast", "--preset", "smoke", *[f"--set={s}" for s in FAST])
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "run" / "results.json").exists()


def test_logits_and_teacher_together_are_refused(world, tmp_path):
    result = invoke("train-student", "--features", world["features"], "--logits", world["views1"], "--teacher",
                    world["teacher"], "--out", tmp_path / "run", "--model", "ast", "--preset", "smoke")
    assert result.exit_code == 1
    assert result.stderr.strip() == ("error: give exactly one of --logits STORE (cached teacher) or --teacher CKPT "
                                     "(online teacher)")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- KD learning

def test_kd_student_learns_its_teacher_not_the_labels(world):
    """A teacher whose cached logits confidently name the *next* class ((y + 1) mod 3): a pure-KD
    student (λ = 0) can learn it only from the KD term; its agreement with the teacher rises to
    nearly all test clips while its accuracy on the true labels stays near zero."""
    root = world["root"]
    store = world["store"]
    shifted = shutil.copytree(world["views1"], root / "shifted.zarr")
    wrong = np.roll(store.targets, 1, axis=1).astype(np.float32)  # one-hot of (y + 1) mod 3
    zarr.open_group(store=str(shifted), mode="r+")["logits"][:] = 4.0 * wrong[:, None, :]
    reseal(shifted)  # a deliberate edit: record the new chunk files, or readers refuse them as altered
    steady = ["augment.mixup_rate=0.0", "augment.freq_mask=0", "augment.time_mask=0", "schedule.decay_start_epoch=8"]
    results = train(world["features"], "ast", root / "kd-shifted", preset="smoke", logits=str(shifted),
                    progress=False, overrides=[*FAST, *steady, "kd.lam=0.0", "train.epochs=8", "data.epoch_len=16",
                                               "optim.lr.ast=3.0e-3"])
    rows = load_metrics(root / "kd-shifted")
    agreement = [r["teacher_agreement"] for r in rows]
    assert agreement[-1] > agreement[0] and agreement[-1] >= 0.9, agreement
    assert results["last"]["accuracy"] <= 0.1, results["last"]


# ---------------------------------------------------------------- kd-sweep

def test_kd_sweep_selects_on_validation_and_resumes(world):
    sweep_app = typer.Typer()
    register_sweep(sweep_app)
    out = world["root"] / "sweep"
    args = ["--features", world["features"], "--logits", world["views1"], "--out", out, "--model", "ast",
            "--preset", "smoke", "--taus", "1,2.5", "--lams", "0.5", *[f"--set={s}" for s in FAST]]
    result = invoke(*args, target=sweep_app)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "sweep.json").read_text())
    assert [(p["tau"], p["lam"], p["run"]) for p in summary["points"]] == \
        [(1.0, 0.5, "tau-1_lam-0.5"), (2.5, 0.5, "tau-2.5_lam-0.5")]
    assert (summary["metric"], summary["val_split"], summary["test_split"]) == ("accuracy", "val", "eval")
    assert summary["selection_on_test_split"] is False
    for point in summary["points"]:
        run = out / point["run"]
        kd = yaml.safe_load((run / "config.yaml").read_text())["kd"]
        assert (kd["tau"], kd["lam"]) == (point["tau"], point["lam"])
        row = load_metrics(run)[point["best_epoch"] - 1]
        best = json.loads((run / "results.json").read_text())["best"]  # test scored from best.pt
        assert point["val"] == row["val_accuracy"] and (point["best_epoch"], point["test"]) == \
            (best["epoch"], best["accuracy"])
    best = max(summary["points"], key=lambda p: p["val"])
    assert summary["best"] == best
    table = (out / "sweep.md").read_text()
    assert f"**{best['run']} ← best**" in table and table.count("← best") == 1
    assert table in result.stdout

    stamps = {p["run"]: (out / p["run"] / "results.json").stat().st_mtime_ns for p in summary["points"]}
    again = invoke(*args, target=sweep_app)
    assert again.exit_code == 0, again.output
    assert {r: (out / r / "results.json").stat().st_mtime_ns for r in stamps} == stamps  # nothing retrained
    assert json.loads((out / "sweep.json").read_text()) == summary

    changed = invoke(*args, "--set=optim.lr.ast=1.0e-4", target=sweep_app)
    assert changed.exit_code == 1
    assert "tau-1_lam-0.5: finished with another config than this sweep's" in changed.stderr
    bad = invoke(*args, "--lams", "0.5,1.5", target=sweep_app)
    assert bad.exit_code == 1 and "lam 1.5 (must be in [0, 1])" in bad.stderr
    bad = invoke(*args, "--taus", "1,x", target=sweep_app)
    assert bad.exit_code == 1 and "--taus '1,x': expected comma-separated numbers" in bad.stderr
