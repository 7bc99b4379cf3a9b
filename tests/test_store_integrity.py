"""Store integrity (issue #11): chunks verified, not assumed; one writer per store; outputs that are not
ours are never destroyed; bad settings and damaged files are one-line errors naming what to fix.

Tiny corpus (24 clips, chunks of 8 → 3 chunks) and a tiny random AST teacher, as in test_teacher_logits;
stage runs in process (the session's `scheduler` fixture).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr

from cmkd_pipe.data_manifests.folder import build_folder
from cmkd_pipe.data_manifests.manifest import Manifest, ManifestError
from cmkd_pipe.pipeline.config import FeatureConfig
from cmkd_pipe.pipeline.stores import feature_store as fs
from cmkd_pipe.pipeline.stores import logits_store as ls
from cmkd_pipe.pipeline.stores.chunk_cache import ChunkCache
from cmkd_pipe.pipeline.stores.chunks import StoreError
from cmkd_pipe.pipeline.stores.feature_store import FeatureStore
from cmkd_pipe.pipeline.stores.integrity import verify_store
from cmkd_pipe.pipeline.stores.lock import lock_path, store_lock
from cmkd_pipe.stages.features import _clip_list, _task, bad_clips_path, compute_chunk, run_features
from cmkd_pipe.stages.teacher_logits import inspect_logits, run_teacher_logits

from faults import cli, stage_env
from test_teacher_logits import CHUNK, CONFIG, VIEWS, save_teacher, tiny_clips

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def main(tmp_path_factory, corpus_writer, make_tone, scheduler) -> dict:
    """A feature store (clip05 silent: one bad clip), a teacher and its logits store; the same clip ids
    and labels with other audio (clip07 also a constant DC offset) in a second store beside the first."""
    root = tmp_path_factory.mktemp("integrity")
    manifest_dir = corpus_writer(root / "corpus", tiny_clips(make_tone))
    features = root / "stores" / "features.zarr"
    run_features(manifest_dir, features, config=CONFIG, chunk_clips=CHUNK, scheduler=scheduler, progress=False)
    save_teacher(root / "teacher.pt", FeatureStore(features))
    logits = root / "logits.zarr"
    run_teacher_logits(features, root / "teacher.pt", logits, **VIEWS, scheduler=scheduler, progress=False)
    other_clips = tiny_clips(make_tone)
    for i, clip in enumerate(other_clips):
        if i != 5:
            clip["audio"] = make_tone(300.0 + 90 * i, 0.5, 16000, noise=0.1, seed=100 + i)
    other_clips[7]["audio"] = np.full(8000, 0.25, dtype=np.float32)
    other_dir = corpus_writer(root / "other", other_clips)
    other = root / "stores" / "other.zarr"
    run_features(other_dir, other, config=CONFIG, chunk_clips=CHUNK, scheduler=scheduler, progress=False,
                 max_bad_fraction=0.1)
    return {"root": root, "manifest_dir": manifest_dir, "features": features, "logits": logits,
            "checkpoint": root / "teacher.pt", "other": other, "other_dir": other_dir}


def copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def fbank_of(path: Path) -> np.ndarray:
    return zarr.open_group(store=str(path), mode="r")["fbank"][:]


# ---------------------------------------------------------------- 1. deleted or altered chunks

@pytest.mark.parametrize("key", ["fbank/c/1/0/0", "clip_id/c/1", "chunk_stats/c/1/0", "chunk_digest/c/1"])
def test_a_deleted_feature_chunk_file_is_refused_and_a_rerun_redoes_exactly_it(main, tmp_path, scheduler, key):
    store = copy(main["features"], tmp_path / "features.zarr")
    (store / key).unlink()
    with pytest.raises(StoreError, match=r"chunk 1 \(clips 8-15\): .*; rerun `cmkd-pipe features` with the same "
                                         r"arguments: damaged chunks are redone") as caught:
        FeatureStore(store)
    assert "\n" not in str(caught.value)
    assert any("chunk 1 (clips 8-15)" in line for line in verify_store(store))
    summary = run_features(main["manifest_dir"], store, config=CONFIG, scheduler=scheduler, progress=False)
    assert summary["chunks_run"] == 1
    assert verify_store(store) == []
    assert FeatureStore(store).content_digest == FeatureStore(main["features"]).content_digest
    assert np.array_equal(fbank_of(store), fbank_of(main["features"]))


def test_an_altered_chunk_of_the_same_size_is_found_by_verify_and_redone(main, tmp_path, scheduler):
    store = copy(main["features"], tmp_path / "features.zarr")
    chunk = store / "fbank" / "c" / "2" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    problems = verify_store(store)
    assert problems and "chunk 2 (clips 16-23): data file fbank/c/2/0/0 is altered (sha256" in problems[0]
    summary = run_features(main["manifest_dir"], store, config=CONFIG, scheduler=scheduler, progress=False)
    assert summary["chunks_run"] == 1 and verify_store(store) == []


def test_a_deleted_logits_chunk_is_refused_reported_by_inspect_and_redone(main, tmp_path, scheduler):
    store = copy(main["logits"], tmp_path / "logits.zarr")
    (store / "logits" / "c" / "1" / "0" / "0").unlink()
    with pytest.raises(StoreError, match=r"chunk 1 \(clips 8-15\): data file logits/c/1/0/0 is missing; rerun "
                                         r"`cmkd-pipe teacher-logits`"):
        ls.LogitsStore(store)  # what train-student opens: it no longer trains against zeros
    report = inspect_logits(store, main["features"])
    assert report["complete"] is False and "logits/c/1/0/0 is missing" in report["problems"][0]
    summary = run_teacher_logits(main["features"], main["checkpoint"], store, **VIEWS, scheduler=scheduler,
                                 progress=False)
    assert summary["chunks_run"] == 1 and summary["complete"]
    assert inspect_logits(store, main["features"])["problems"] == []
    expected = zarr.open_group(store=str(main["logits"]), mode="r")["logits"][:]
    assert np.array_equal(zarr.open_group(store=str(store), mode="r")["logits"][:], expected)


def test_a_logits_store_of_other_feature_data_with_equal_ids_and_settings_is_refused(main):
    features, other = FeatureStore(main["features"]), FeatureStore(main["other"])
    assert features.fingerprint == other.fingerprint  # same manifest table and settings: not enough
    logits = ls.LogitsStore(main["logits"])
    logits.check_matches(features)
    with pytest.raises(StoreError, match=r"computed from other feature data \(feature store content digest "
                                         rf"{features.content_digest[:16]} recorded .*, {other.content_digest[:16]} "
                                         rf"in {main['other']}"):
        logits.check_matches(other)


def test_content_digest_attrs(main):
    features = zarr.open_group(store=str(main["features"]), mode="r").attrs
    logits = zarr.open_group(store=str(main["logits"]), mode="r").attrs
    assert len(features["content_digest"]) == 64 and len(features["generation"]) == 32
    assert logits["feature_content_digest"] == features["content_digest"]
    assert len(logits["content_digest"]) == 64
    assert verify_store(main["features"]) == [] and verify_store(main["logits"]) == []


# ---------------------------------------------------------------- 2. one writer per store

def test_a_second_writer_is_refused_naming_the_owner_even_with_overwrite(main, tmp_path):
    store = copy(main["features"], tmp_path / "features.zarr")
    before = fbank_of(store)
    with store_lock(store, "features"):
        for overwrite in (False, True):
            with pytest.raises(StoreError, match=rf"another run is writing this store \(features, pid {os.getpid()} "
                                                 rf"on {socket.gethostname()}, since .*delete .*\.features\.zarr\.lock"):
                run_features(main["manifest_dir"], store, config=FeatureConfig(num_mel_bins=32, target_frames=30),
                             overwrite=overwrite, progress=False)
    assert np.array_equal(fbank_of(store), before) and not os.path.lexists(lock_path(store))


def test_a_stale_lock_of_a_dead_process_is_taken_over_and_another_hosts_lock_is_kept(main, tmp_path):
    store = copy(main["features"], tmp_path / "features.zarr")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    owner = {"host": socket.gethostname(), "pid": dead.pid, "what": "features", "started": "earlier"}
    os.symlink(json.dumps(owner), lock_path(store))  # the lock is a symlink whose target names the owner
    assert run_features(main["manifest_dir"], store, config=CONFIG, progress=False)["chunks_run"] == 0
    assert not os.path.lexists(lock_path(store))
    os.symlink(json.dumps({**owner, "host": "elsewhere", "pid": 1}), lock_path(store))
    with pytest.raises(StoreError, match="pid 1 on elsewhere"):
        run_features(main["manifest_dir"], store, config=CONFIG, progress=False)
    assert os.path.lexists(lock_path(store))


def test_a_task_of_an_older_generation_cannot_write_into_a_recreated_store(main, tmp_path):
    manifest = Manifest.load(main["manifest_dir"])
    store = tmp_path / "features.zarr"
    old = fs.create_feature_store(store, manifest, CONFIG, CHUNK).attrs["generation"]
    task = _task(store, _clip_list(manifest), 0, CHUNK, CONFIG, 8, 1e-5, old)
    fs.create_feature_store(store, manifest, CONFIG, CHUNK)  # --overwrite by another run
    with pytest.raises(StoreError, match="recreated since this chunk task was scheduled"):
        compute_chunk(task)
    group = zarr.open_group(store=str(store), mode="r")
    assert group["chunk_done"][0] == 0 and not (store / "fbank" / "c" / "0" / "0" / "0").exists()


# ---------------------------------------------------------------- 3. never destroy what is not ours

def test_teacher_logits_refuses_a_foreign_folder_or_a_file_as_out(main, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep")
    afile = tmp_path / "afile"
    afile.write_text("keep")
    for out, message in ((folder, "exists and is not a logits store"), (afile, "exists and is not a folder"),
                         (main["other"], "exists and is a cmkd-pipe/features/2 store, not a logits store")):
        with pytest.raises(StoreError, match=message):
            run_teacher_logits(main["features"], main["checkpoint"], out, **VIEWS, overwrite=True, progress=False)
    assert (folder / "notes.txt").read_text() == "keep" and afile.read_text() == "keep"
    assert verify_store(main["other"]) == []


def test_manifest_save_refuses_a_file_or_foreign_folder_and_respects_the_umask(main, tmp_path):
    manifest = Manifest.load(main["manifest_dir"])
    afile = tmp_path / "afile"
    afile.write_text("keep")
    with pytest.raises(ManifestError, match="afile: exists and is not a folder"):
        manifest.save(afile)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "data.txt").write_text("keep")
    with pytest.raises(ManifestError, match="foreign: exists and is not a manifest folder"):
        manifest.save(foreign)
    assert afile.read_text() == "keep" and (foreign / "data.txt").read_text() == "keep"
    old = os.umask(0o022)
    try:
        saved = manifest.save(tmp_path / "manifest")
        saved = manifest.save(saved)  # an existing manifest folder is replaced
    finally:
        os.umask(old)
    assert stat.S_IMODE(saved.stat().st_mode) == 0o755
    assert Manifest.load(saved).hash() == manifest.hash()


def test_bad_clip_lists_are_named_after_their_store(main):
    assert bad_clips_path(main["features"]).name == "features.zarr.bad_clips.csv"
    first = pd.read_csv(bad_clips_path(main["features"]))
    second = pd.read_csv(bad_clips_path(main["other"]))
    assert first["clip_id"].tolist() == ["clip05"]
    assert second["clip_id"].tolist() == ["clip05", "clip07"]
    assert second["reason"].tolist()[1].startswith("constant:")


# ---------------------------------------------------------------- 4. one line instead of a traceback

def test_a_truncated_fbank_chunk_is_named_at_open_and_at_read(main, tmp_path):
    store = copy(main["features"], tmp_path / "features.zarr")
    chunk = store / "fbank" / "c" / "1" / "0" / "0"
    intact = chunk.read_bytes()
    chunk.write_bytes(intact[:100])
    with pytest.raises(StoreError, match=r"chunk 1 \(clips 8-15\): data file fbank/c/1/0/0 is truncated"):
        FeatureStore(store)
    chunk.write_bytes(intact)
    opened = FeatureStore(store)
    chunk.write_bytes(b"\0" * len(intact))  # damaged after the reader opened it
    with pytest.raises(StoreError, match=r"fbank chunk 1 \(clips 8-15\) cannot be read .*rerun the stage"):
        opened.read(np.arange(8, 12))
    with pytest.raises(StoreError, match=rf"{store}: fbank chunk 1 \(clips 8-15\) cannot be read"):
        ChunkCache(opened.fbank, opened.chunk_clips).rows([9])  # the training batches' read path


def test_a_corrupt_array_metadata_file_is_named(main, tmp_path):
    store = copy(main["features"], tmp_path / "features.zarr")
    meta = store / "fbank" / "zarr.json"
    meta.write_text('{"shape": [24,\x01')
    with pytest.raises(StoreError, match=rf"{meta}: corrupt Zarr metadata .*--overwrite"):
        FeatureStore(store)
    assert any(str(meta) in line for line in verify_store(store))


@pytest.mark.parametrize("settings, message", [
    ({"chunk_clips": 0}, "chunk_clips must be a whole number >= 1, got 0"),
    ({"config": FeatureConfig(target_frames=0)}, "target_frames must be a whole number >= 1, got 0"),
    ({"max_bad_fraction": -1.0}, r"max_bad_fraction must be between 0 and 1 \(a share of the clips\), got -1.0"),
    ({"max_bad_fraction": 1.5}, "max_bad_fraction must be between 0 and 1"),
])
def test_settings_no_store_can_be_built_with_are_refused(main, tmp_path, settings, message):
    with pytest.raises(ValueError, match=message):
        run_features(main["manifest_dir"], tmp_path / "f.zarr", **{"config": CONFIG, **settings}, progress=False)
    assert not (tmp_path / "f.zarr").exists()


def test_cli_chunk_clips_zero_is_one_line(main, tmp_path):
    done = subprocess.run(cli("features", "--manifest", str(main["manifest_dir"]), "--out", str(tmp_path / "f.zarr"),
                              "--chunk-clips", "0"), cwd=REPO, env=stage_env(), capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.strip() == "error: chunk_clips must be a whole number >= 1, got 0"


def test_a_broken_manifest_folder_is_named(main, tmp_path):
    broken = copy(main["manifest_dir"], tmp_path / "manifest")
    (broken / "clips.csv").unlink()
    with pytest.raises(ManifestError, match=r"clips.csv: missing from the manifest folder"):
        Manifest.load(broken)
    broken = copy(main["manifest_dir"], tmp_path / "manifest2")
    (broken / "manifest.json").write_text('{"name": "tiny", "multi')
    with pytest.raises(ManifestError, match=r"manifest2/manifest.json: not a valid manifest.json"):
        Manifest.load(broken)


# ---------------------------------------------------------------- 5. audio that should not pass

def test_a_folder_corpus_with_a_broken_link_lists_it_as_a_bad_clip(tmp_path, make_tone, scheduler):
    import soundfile as sf

    root = tmp_path / "corpus"
    for name in ("dog", "cat"):
        (root / name).mkdir(parents=True)
        for i in range(3):
            sf.write(root / name / f"{i}.wav", make_tone(400.0 + 100 * i, 0.5, 16000, noise=0.05, seed=i), 16000)
    (root / "dog" / "gone.wav").symlink_to(tmp_path / "nowhere.wav")
    manifest = build_folder(root, folds=0)
    assert len(manifest) == 7
    store = tmp_path / "features.zarr"
    summary = run_features(manifest.save(tmp_path / "manifest"), store, config=CONFIG, chunk_clips=4,
                           scheduler=scheduler, max_bad_fraction=0.2, progress=False)
    table = pd.read_csv(bad_clips_path(store))
    assert summary["bad"] == 1 and table["clip_id"].tolist() == ["dog/gone"]
    assert table["reason"][0].startswith("missing: broken symbolic link to")


def test_a_cli_run_beside_a_writer_in_another_process_is_one_line_and_changes_nothing(main, tmp_path):
    store = copy(main["features"], tmp_path / "features.zarr")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom cmkd_pipe.pipeline.stores.lock import store_lock\n"
                               f"with store_lock({str(store)!r}, 'features'):\n"
                               "    print('held', flush=True)\n    time.sleep(120)"],
                              cwd=REPO, env=stage_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        done = subprocess.run(cli("features", "--manifest", str(main["manifest_dir"]), "--out", str(store),
                                  "--overwrite", "--target-frames", "30", "--num-mel-bins", "32"),
                              cwd=REPO, env=stage_env(), capture_output=True, text=True, timeout=300)
    finally:
        holder.kill()
        holder.wait()
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert f"another run is writing this store (features, pid {holder.pid}" in lines[0]
    assert verify_store(store) == [] and np.array_equal(fbank_of(store), fbank_of(main["features"]))
