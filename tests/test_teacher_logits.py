"""Teacher-logits stage end to end on a tiny corpus (24 clips, 32 mel bins, 64 frames, chunks of 8) and
a tiny random AST: logits equal a direct forward pass, the student's replay of each view reproduces
them, provenance, store mismatches, resume (in-process and after a real SIGKILL), inspection, CLI.

In-process runs take the session's `scheduler` (synchronous: tasks in the test process); the killed CLI
run is synchronous too (killing a LocalCluster mid-stage: test_faults.py).
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
import zarr
from typer.testing import CliRunner

from cmkd_pipe.cli.logits import register
from cmkd_pipe.data_manifests.manifest import Manifest, Vocabulary
from cmkd_pipe.pipeline.augment import ViewSpec
from cmkd_pipe.pipeline.config import FeatureConfig, Normalization
from cmkd_pipe.pipeline.features import normalize
from cmkd_pipe.pipeline.metrics import summarize
from cmkd_pipe.pipeline.stores import logits_store as ls
from cmkd_pipe.pipeline.stores.chunk_cache import ChunkCache
from cmkd_pipe.pipeline.stores.chunks import StoreError, pending_chunks
from cmkd_pipe.pipeline.stores.feature_store import FeatureStore, feature_fingerprint
from cmkd_pipe.pipeline.views import ViewBuilder
from cmkd_pipe.stages.features import run_features
from cmkd_pipe.stages.teacher_logits import inspect_logits, run_teacher_logits

from conftest import save_random_model
from faults import cli, kill_group

REPO = Path(__file__).resolve().parents[1]
CONFIG = FeatureConfig(num_mel_bins=32, target_frames=64)
CHUNK = 8
TINY_AST = {"arch": "ast", "size": "custom", "embed_dim": 16, "depth": 1, "num_heads": 2, "patch": 16,
            "fstride": 16, "tstride": 16}
VIEWS = {"views": 3, "view_seed": 0, "freq_mask": 8, "time_mask": 16, "mixup_rate": 0.6}
SPEC = ViewSpec(n_views=3, freq_mask=8, time_mask=16, mixup_rate=0.6, alpha=10.0, seed=0)
SPLITS = ("train", "val", "eval")


def tiny_clips(make_tone, n: int = 24, multilabel: bool = False) -> list[dict]:
    """n short tones over three classes and splits (0.4–0.86 s: some padded, some trimmed) and, at
    row 5, one silent clip, which the feature stage flags as bad (ok = false, zero fbank)."""
    clips = []
    for i in range(n):
        labels = ["abc"[i % 3], "abc"[(i + 1) % 3]] if multilabel and i % 2 else ["abc"[i % 3]]
        audio = (np.zeros(8000, dtype=np.float32) if i == 5 else
                 make_tone(250.0 + 70 * i, 0.4 + 0.02 * i, 16000, noise=0.05, seed=i))
        clips.append({"clip_id": f"clip{i:02d}", "labels": labels, "split": SPLITS[i % 3], "audio": audio})
    return clips


def save_teacher(path: Path, store: FeatureStore, seed: int = 0) -> tuple[torch.nn.Module, Normalization]:
    """A random tiny AST whose outputs depend clearly on the input, saved with a normalisation other
    than the store's (so using the wrong one shows)."""
    return save_random_model(path, store, TINY_AST, seed=seed,
                             normalization=Normalization(store.mean + 1.0, store.std * 1.5, 2.0))


def forward(model: torch.nn.Module, x: torch.Tensor, norm: Normalization) -> np.ndarray:
    with torch.no_grad():
        return model(normalize(x, norm)).numpy()


@pytest.fixture(scope="module")
def main(tmp_path_factory, corpus_writer, make_tone, scheduler) -> dict:
    """Features of the tiny corpus, a teacher checkpoint, and its 3-view logits store (one run)."""
    root = tmp_path_factory.mktemp("main")
    manifest_dir = corpus_writer(root / "corpus", tiny_clips(make_tone))
    features = root / "features.zarr"
    run_features(manifest_dir, features, config=CONFIG, chunk_clips=CHUNK, scheduler=scheduler, progress=False)
    store = FeatureStore(features)
    model, norm = save_teacher(root / "teacher.pt", store)
    out = root / "logits.zarr"
    summary = run_teacher_logits(features, root / "teacher.pt", out, **VIEWS, batch_size=5, scheduler=scheduler,
                                 progress=False)
    return {"root": root, "manifest_dir": manifest_dir, "features": features, "store": store,
            "checkpoint": root / "teacher.pt", "model": model, "norm": norm, "out": out, "summary": summary,
            "logits": zarr.open_group(store=str(out), mode="r")["logits"][:]}


@pytest.fixture(scope="module")
def others(main, tmp_path_factory, corpus_writer, make_tone, scheduler) -> dict:
    """Feature stores that must not match `main`: same clips with other settings, and a clip renamed."""
    root = tmp_path_factory.mktemp("others")
    settings = root / "other-settings.zarr"
    run_features(main["manifest_dir"], settings, config=FeatureConfig(num_mel_bins=32, target_frames=48),
                 chunk_clips=CHUNK, scheduler=scheduler, progress=False)
    clips = tiny_clips(make_tone)
    clips[6]["clip_id"] = "renamed"
    renamed = root / "renamed.zarr"
    run_features(corpus_writer(root / "corpus", clips), renamed, config=CONFIG, chunk_clips=CHUNK,
                 scheduler=scheduler, progress=False)
    return {"settings": settings, "renamed": renamed}


def copy_store(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


# ---------------------------------------------------------------- what is stored

def test_summary_schema_and_provenance(main):
    summary, store = main["summary"], main["store"]
    assert {k: summary[k] for k in ("clips", "chunks", "chunks_run", "chunk_clips", "views", "complete")} == \
        {"clips": 24, "chunks": 3, "chunks_run": 3, "chunk_clips": CHUNK, "views": 3, "complete": True}
    assert summary["seconds"] > 0 and summary["clips_per_second"] > 0
    group = zarr.open_group(store=str(main["out"]), mode="r")
    attrs = group.attrs.asdict()
    assert attrs["schema"] == ls.SCHEMA and attrs["complete"] is True and attrs["n_chunks"] == 3
    assert group["logits"].shape == (24, 3, 3) and group["logits"].dtype == np.float32
    assert group["logits"].chunks == (CHUNK, 3, 3)
    assert group["chunk_done"][:].tolist() == [1, 1, 1]
    np.testing.assert_array_equal(ls.LogitsStore(main["out"]).clip_ids, store.clip_ids)

    teacher = attrs["teacher"]
    assert teacher["checkpoint_sha256"] == hashlib.sha256(main["checkpoint"].read_bytes()).hexdigest()
    assert teacher["checkpoint"] == str(main["checkpoint"].resolve())
    assert teacher["arch"] == "ast" and teacher["model_config"] == dict(main["model"].config)
    assert teacher["normalization"] == main["norm"].to_dict() and teacher["view_mix_mode"] == "power"
    assert attrs["views"] == SPEC.to_dict()
    assert attrs["vocabulary"] == store.vocabulary
    assert attrs["vocabulary_hash"] == Vocabulary.from_records(store.vocabulary).hash()
    manifest = Manifest.load(main["manifest_dir"])
    assert attrs["feature_fingerprint"] == store.fingerprint == feature_fingerprint(manifest.in_store_order().hash(), CONFIG)
    assert attrs["feature_store"] == str(main["features"].resolve())
    assert attrs["multilabel"] is False and attrs["code_version"] and attrs["created"]


def test_view_zero_is_the_teacher_on_the_clean_normalised_fbank(main):
    store, logits = main["store"], main["logits"]
    bad = store.clip_ids.tolist().index("clip05")
    assert not store.ok[bad] and not store.read([bad]).any()  # the bad clip still has logits (of zeros)
    x = torch.from_numpy(store.read(np.arange(len(store)), np.float32))
    np.testing.assert_allclose(logits[:, 0], forward(main["model"], x, main["norm"]), rtol=0, atol=1e-5)
    with_store_norm = forward(main["model"], x, store.normalization())
    assert np.abs(logits[:, 0] - with_store_norm).max() > 1e-2  # the teacher's own normalisation is used


def test_the_students_replay_of_every_view_reproduces_the_stored_logits(main):
    """The student rebuilds views with ViewBuilder in its own batches (any order); same logits."""
    store, logits = main["store"], main["logits"]
    spec = ViewSpec.from_dict(ls.LogitsStore(main["out"]).attrs["views"])
    builder = ViewBuilder(store, spec, ChunkCache(store.fbank, store.chunk_clips), "power")
    rows = np.random.default_rng(0).permutation(len(store))
    x = ChunkCache(store.fbank, store.chunk_clips).rows(rows)
    mixed = 0
    for view in (1, 2):
        table = builder.table(rows, [view] * len(rows))
        inputs = builder.inputs(rows, x, table)
        mixed += int((table.partner >= 0).sum())
        np.testing.assert_allclose(logits[rows, view], forward(main["model"], inputs, main["norm"]),
                                   rtol=0, atol=1e-5)
        assert np.abs(logits[:, view] - logits[:, 0]).max() > 1e-2  # views are not the clean input
    assert 0 < mixed < 2 * len(rows)  # some views mix with a partner, some do not


# ---------------------------------------------------------------- mismatches the reader refuses

def test_logits_store_refuses_other_features_clips_and_vocabulary(main, others):
    logits = ls.LogitsStore(main["out"])
    logits.check_matches(main["store"])
    with pytest.raises(StoreError) as caught:
        logits.check_matches(FeatureStore(others["settings"]))
    assert "feature store differs (fingerprint" in str(caught.value) and "clip ids" not in str(caught.value)
    with pytest.raises(StoreError, match=r"clip ids differ \(24 vs 24 clips; first difference at row \d+: "
                                         r"'clip06' vs 'renamed'\)"):
        logits.check_matches(FeatureStore(others["renamed"]))
    vocabulary = [dict(record) for record in main["store"].vocabulary]
    vocabulary[1]["id"] = "x"
    with pytest.raises(StoreError, match=r"label vocabulary differs at index 1: 'b' vs 'x'.*teacher-logits"):
        logits.check_matches(main["store"], vocabulary)


def test_checkpoint_must_fit_the_feature_store(main, others, tmp_path):
    out = tmp_path / "never.zarr"
    with pytest.raises(ValueError, match=r"does not fit the feature store .*target_frames: 64 != 48"):
        run_teacher_logits(others["settings"], main["checkpoint"], out, progress=False)
    assert not out.exists()
    with pytest.raises(ValueError, match="is the feature store itself"):
        run_teacher_logits(main["features"], main["checkpoint"], main["features"], progress=False)


def test_incomplete_store_is_refused(main, tmp_path):
    teacher = ls.LogitsStore(main["out"]).attrs["teacher"]
    ls.create_logits_store(tmp_path / "new.zarr", main["store"], teacher, SPEC.to_dict(), CHUNK)
    with pytest.raises(StoreError, match=r"incomplete \(3 of 3 chunks not done\).*rerun"):
        ls.LogitsStore(tmp_path / "new.zarr")


def test_verify_readable_names_a_truncated_chunk(main, tmp_path):
    ls.LogitsStore(main["out"]).verify_readable()
    broken = copy_store(main["out"], tmp_path / "broken.zarr")
    chunk_file = broken / "logits" / "c" / "1" / "0" / "0"
    chunk_file.write_bytes(chunk_file.read_bytes()[:10])
    with pytest.raises(StoreError, match=r"chunk 1 \(clips 8-15\): data file logits/c/1/0/0 is truncated.*"
                                         r"rerun `cmkd-pipe teacher-logits` with the same arguments"):
        ls.LogitsStore(broken)


# ---------------------------------------------------------------- resume and provenance

def test_resume_runs_only_pending_chunks(main, tmp_path, scheduler):
    copy = copy_store(main["out"], tmp_path / "resume.zarr")
    group = zarr.open_group(store=str(copy), mode="r+")
    group["chunk_done"][1] = 0
    group["logits"][8:16] = 0
    group.attrs["complete"] = False
    summary = run_teacher_logits(main["features"], main["checkpoint"], copy, **VIEWS, batch_size=5,
                                 scheduler=scheduler, progress=False)
    assert (summary["chunks_run"], summary["complete"]) == (1, True)
    assert np.array_equal(group["logits"][:], main["logits"])
    again = run_teacher_logits(main["features"], main["checkpoint"], copy, **VIEWS, progress=False)
    assert again["chunks_run"] == 0


def test_other_provenance_needs_overwrite(main, tmp_path, scheduler):
    with pytest.raises(StoreError, match=r"other views; pass --overwrite"):
        run_teacher_logits(main["features"], main["checkpoint"], main["out"], **{**VIEWS, "view_seed": 1},
                           progress=False)
    other_teacher = tmp_path / "other.pt"
    save_teacher(other_teacher, main["store"], seed=1)
    with pytest.raises(StoreError, match=r"other teacher; pass --overwrite"):
        run_teacher_logits(main["features"], other_teacher, main["out"], **VIEWS, progress=False)
    with pytest.raises(StoreError, match=r"not a logits store; choose another --out for `teacher-logits` \(--overwrite replaces only"):
        run_teacher_logits(main["features"], main["checkpoint"], tmp_path, overwrite=True, progress=False)
    assert other_teacher.is_file()  # nothing was deleted

    copy = copy_store(main["out"], tmp_path / "reseeded.zarr")
    summary = run_teacher_logits(main["features"], main["checkpoint"], copy, **{**VIEWS, "view_seed": 1},
                                 batch_size=5, scheduler=scheduler, overwrite=True, progress=False)
    assert summary["chunks_run"] == 3
    reseeded = ls.LogitsStore(copy)
    assert reseeded.attrs["views"]["seed"] == 1
    assert np.array_equal(reseeded.logits[:, 0], main["logits"][:, 0])  # same clean view
    assert np.abs(reseeded.logits[:, 1:] - main["logits"][:, 1:]).max() > 1e-2  # other augmented views


def test_the_checkpoint_is_hashed_once_per_run(main, tmp_path, scheduler, monkeypatch):
    """The driver hashes the checkpoint for the provenance; a worker loading the teacher does not rehash it."""
    from cmkd_pipe.stages import teacher_logits

    hashed = []
    monkeypatch.setattr(teacher_logits, "file_sha256", lambda path, real=teacher_logits.file_sha256:
                        hashed.append(path) or real(path))
    monkeypatch.setattr(teacher_logits, "_TEACHERS", {})  # as a fresh worker: the teacher is loaded
    summary = run_teacher_logits(main["features"], main["checkpoint"], tmp_path / "once.zarr", batch_size=5,
                                 scheduler=scheduler, progress=False)
    assert summary["chunks_run"] == 3 and hashed == [main["checkpoint"]]


def test_workers_refuse_a_checkpoint_changed_after_it_was_hashed(main, tmp_path, monkeypatch):
    from cmkd_pipe.pipeline.models.checkpoint import file_sha256, file_stamp
    from cmkd_pipe.stages import teacher_logits

    path = Path(shutil.copy(main["checkpoint"], tmp_path / "teacher.pt"))
    digest, stamp = file_sha256(path), file_stamp(path)
    monkeypatch.setattr(teacher_logits, "_TEACHERS", {})
    model, _ = teacher_logits._teacher(str(path), digest, stamp, "cpu")
    assert not model.training
    save_teacher(path, main["store"], seed=2)  # replaced after the driver hashed it
    monkeypatch.setattr(teacher_logits, "_TEACHERS", {})
    with pytest.raises(StoreError, match=r"teacher.pt changed since this run started \(size or modification time"):
        teacher_logits._teacher(str(path), digest, stamp, "cpu")


def test_gpu_plan_pins_local_workers_and_asks_every_task_for_a_gpu(monkeypatch):
    from cmkd_pipe.stages.teacher_logits import gpu_plan

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert gpu_plan("cpu", None, None) == ("cpu", None)
    assert gpu_plan("cuda", None, None) == ("cuda", [0, 1])  # one worker per GPU, each sees its own as cuda
    assert gpu_plan("cuda", 3, None) == ("cuda", [0, 1, 0])
    assert gpu_plan("cuda:1", None, None) == ("cuda", [1])
    assert gpu_plan("cuda:1", None, "tcp://host:8786") == ("cuda:1", [1])  # the cluster's workers are pinned
    assert gpu_plan("cuda", None, "synchronous") == ("cuda", [0])


def test_cuda_on_a_cluster_without_gpu_workers_is_refused(main, tmp_path, dask_cluster):
    with pytest.raises(ValueError, match=r"no worker declares the GPU resource.*or pass --device cpu$"):
        run_teacher_logits(main["features"], main["checkpoint"], tmp_path / "gpu.zarr", device="cuda",
                           scheduler=dask_cluster, progress=False)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs Linux /proc to watch the process group")
def test_killed_run_resumes_to_the_same_logits(main, tmp_path, scheduler):
    """SIGKILL the CLI after its first chunk, resume, compare bitwise with an
    uninterrupted run of the same settings (one clip per chunk, so the kill lands mid-run)."""
    store = tmp_path / "killed.zarr"
    options = ["--views", "3", "--view-seed", "0", "--freq-mask", "8", "--time-mask", "16", "--mixup-rate", "0.6",
               "--chunk-clips", "1", "--batch-size", "5"]
    command = cli("teacher-logits", "--features", str(main["features"]), "--checkpoint",
                           str(main["checkpoint"]), "--out", str(store), "--scheduler", "synchronous", "--device", "cpu",
                           *options)
    markers = store / "chunk_done" / "c"  # a done marker is a chunk file (0, the fill value, is not stored)
    with open(tmp_path / "first.log", "wb") as log:
        first = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not (markers.is_dir() and any(markers.iterdir())):
            assert first.poll() is None, "the run ended before it could be killed: " + \
                (tmp_path / "first.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "no chunk finished in time"
            time.sleep(0.002)
    finally:
        kill_group(first)

    group = zarr.open_group(store=str(store), mode="r")
    pending = len(pending_chunks(group))
    assert group.attrs["complete"] is False and 0 < pending < 24
    with pytest.raises(StoreError, match="incomplete"):
        ls.LogitsStore(store)

    settings = {**VIEWS, "chunk_clips": 1, "batch_size": 5, "device": "cpu", "scheduler": scheduler,
                "progress": False}
    resumed = run_teacher_logits(main["features"], main["checkpoint"], store, **settings)
    assert (resumed["chunks_run"], resumed["chunks"], resumed["complete"]) == (pending, 24, True)
    reference = tmp_path / "reference.zarr"
    run_teacher_logits(main["features"], main["checkpoint"], reference, **settings)
    a, b = ls.LogitsStore(store).logits[:], ls.LogitsStore(reference).logits[:]
    assert np.array_equal(a.view(np.uint32), b.view(np.uint32))
    np.testing.assert_allclose(a, main["logits"], rtol=0, atol=1e-5)  # batch composition only rounds


# ---------------------------------------------------------------- inspection

def test_inspect_reports_completeness_provenance_metrics_and_plots(main, others, tmp_path):
    store, logits = main["store"], main["logits"]
    png = tmp_path / "plots" / "teacher.png"
    report = inspect_logits(main["out"], png=png)
    assert (report["complete"], report["chunks_done"], report["chunks"], report["clips"]) == (True, 3, 3, 24)
    assert report["teacher"]["checkpoint_sha256"] == hashlib.sha256(main["checkpoint"].read_bytes()).hexdigest()
    assert report["views"] == SPEC.to_dict() and report["feature_fingerprint"] == store.fingerprint
    assert report["created"] and report["code_version"]
    assert list(report["metrics"]) == list(SPLITS)
    probabilities = torch.softmax(torch.from_numpy(logits[:, 0]), dim=1).numpy()
    for split, metrics in report["metrics"].items():
        rows = store.select(split)  # good clips only: the bad clip (row 5, eval) is left out
        assert metrics["n_clips"] == len(rows) == (7 if split == "eval" else 8)
        assert metrics["accuracy"] == summarize(probabilities[rows], store.targets[rows], False)["accuracy"]
        assert metrics["mean_confidence"] == pytest.approx(probabilities[rows].max(axis=1).mean(), rel=1e-6)
        assert 0 < metrics["mean_entropy"] < np.log(3)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and report["png"] == str(png)

    moved_features = copy_store(main["features"], tmp_path / "moved-features.zarr")
    assert inspect_logits(main["out"], features=moved_features)["metrics"] == report["metrics"]
    with pytest.raises(StoreError, match="feature store differs"):
        inspect_logits(main["out"], features=others["settings"])

    lost = copy_store(main["out"], tmp_path / "lost.zarr")
    zarr.open_group(store=str(lost), mode="r+").attrs["feature_store"] = str(tmp_path / "gone.zarr")
    assert "not found; pass --features" in inspect_logits(lost)["metrics_skipped"]
    zarr.open_group(store=str(lost), mode="r+")["chunk_done"][2] = 0
    zarr.open_group(store=str(lost), mode="r+").attrs["complete"] = False
    partial = inspect_logits(lost, features=main["features"])
    assert (partial["complete"], partial["chunks_done"], partial["metrics"]) == (False, 2, None)
    with pytest.raises(StoreError, match="cannot plot: the store is damaged or incomplete.*not marked done"):
        inspect_logits(lost, png=tmp_path / "no.png")


def test_multilabel_teacher_metrics(tmp_path, corpus_writer, make_tone, scheduler):
    manifest_dir = corpus_writer(tmp_path / "corpus", tiny_clips(make_tone, n=12, multilabel=True), multilabel=True)
    features = tmp_path / "features.zarr"
    run_features(manifest_dir, features, config=CONFIG, chunk_clips=CHUNK, scheduler=scheduler,
                 max_bad_fraction=0.1, progress=False)
    store = FeatureStore(features)
    model, norm = save_teacher(tmp_path / "teacher.pt", store)
    out = tmp_path / "logits.zarr"
    run_teacher_logits(features, tmp_path / "teacher.pt", out, scheduler=scheduler, progress=False)
    logits = ls.LogitsStore(out).logits[:]
    assert logits.shape == (12, 1, 3)
    x = torch.from_numpy(store.read(np.arange(len(store)), np.float32))
    np.testing.assert_allclose(logits[:, 0], forward(model, x, norm), rtol=0, atol=1e-5)
    report = inspect_logits(out, png=tmp_path / "multilabel.png")
    probabilities = torch.sigmoid(torch.from_numpy(logits[:, 0])).numpy()
    for split, metrics in report["metrics"].items():
        rows = store.select(split)
        expected = summarize(probabilities[rows], store.targets[rows], True)
        assert metrics["mAP"] == expected["mAP"] and metrics["mAUC"] == expected["mAUC"]
        assert "per_class_ap" not in metrics and 0 < metrics["mean_entropy"] < np.log(2)
    assert (tmp_path / "multilabel.png").is_file()


# ---------------------------------------------------------------- CLI

def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def test_cli_help_lists_the_options():
    result = CliRunner().invoke(_app(), ["teacher-logits", "--help"])
    assert result.exit_code == 0
    for option in ["--features", "--checkpoint", "--out", "--views", "--view-seed", "--freq-mask", "--time-mask",
                   "--mixup-rate", "--chunk-clips", "--batch-size", "--scheduler", "--workers", "--device",
                   "--overwrite"]:
        assert option in result.output, option


def test_cli_errors_are_one_line_with_exit_code_1(main, tmp_path):
    absent = tmp_path / "absent.zarr"
    result = CliRunner().invoke(_app(), ["teacher-logits", "--features", str(absent), "--checkpoint",
                                         str(main["checkpoint"]), "--out", str(tmp_path / "l.zarr")])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert lines[0].startswith("error:") and str(absent) in lines[0] and "no Zarr store here" in lines[0]
    result = CliRunner().invoke(_app(), ["teacher-logits", "--features", str(main["features"]), "--checkpoint",
                                         str(main["checkpoint"]), "--out", str(tmp_path / "l.zarr"),
                                         "--mixup-rate", "2"])
    assert result.exit_code == 1 and "mixup_rate must be in [0, 1]" in result.stderr
    result = CliRunner().invoke(_app(), ["teacher-logits", "--features", str(main["features"]), "--checkpoint",
                                         str(main["checkpoint"]), "--out", str(tmp_path / "l.zarr"),
                                         "--device", "gpu"])
    assert result.exit_code == 1 and "device 'gpu' is not a torch device" in result.stderr
    assert not (tmp_path / "l.zarr").exists()


def test_cli_inspect_prints_json(main):
    result = CliRunner().invoke(_app(), ["inspect-logits", str(main["out"])])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["complete"] is True and set(report["metrics"]) == set(SPLITS)
