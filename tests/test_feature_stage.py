"""Feature stage end to end on tiny corpora: store schema, statistics, reader, bad clips, mismatches,
resume after a real SIGKILL of the CLI, and the CLI's error path.

In-process runs take the session's `scheduler` (synchronous: tasks in the test process); the killed CLI
run is synchronous too, so the kill lands in one process (killing a LocalCluster: test_faults.py).
"""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchaudio.compliance.kaldi as kaldi
import zarr

from cmkd_pipe.data_manifests.manifest import Manifest
from cmkd_pipe.pipeline.audio import load_audio
from cmkd_pipe.pipeline.config import FeatureConfig
from cmkd_pipe.pipeline.stores.chunks import StoreError, pending_chunks, read_strings
from cmkd_pipe.pipeline.stores.codecs import DEFAULT_CODEC, ZARR_DEFAULT, compressors
from cmkd_pipe.pipeline.stores.feature_store import SCHEMA, FeatureStore, create_feature_store
from cmkd_pipe.pipeline.training.presets import resolve_config
from cmkd_pipe.pipeline.training.schema import FeaturesSection as TrainingFeatures
from cmkd_pipe.stages.features import TooManyBadClips, bad_clips_path, run_features

from faults import cli, kill_group

REPO = Path(__file__).resolve().parents[1]
CONFIG = FeatureConfig(target_frames=100)  # 1 s at a 10 ms shift: the tiny clips are both padded and trimmed
CHUNK = 3
# float16 keeps 11 significant bits: |stored - x| <= 2^-11 |x| (round to nearest) for normal numbers,
# and <= 2^-25 in the subnormal range. Log-mel values lie in about [-16, 30], so the error is < 0.016.
F16_REL, F16_ABS = 2.0 ** -11, 2.0 ** -25


@pytest.fixture(scope="module")
def built(tmp_path_factory, corpus_writer, scheduler) -> dict:
    """The default tiny corpus (8 clips) run once through the stage: manifest folder, store, summary."""
    root = tmp_path_factory.mktemp("built")
    manifest_dir = corpus_writer(root / "corpus")
    store = root / "features.zarr"
    summary = run_features(manifest_dir, store, config=CONFIG, chunk_clips=CHUNK, scheduler=scheduler,
                           progress=False)
    return {"manifest_dir": manifest_dir, "store": store, "summary": summary}


def reference_features(manifest: Manifest) -> list[np.ndarray]:
    """Unpadded float32 fbank of every clip, computed with the AST loader's own kaldi call on one
    thread, as the stage's tasks run (torch results can differ in the last bits across thread counts)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = []
        for i in range(len(manifest)):
            wav = load_audio(manifest.audio_path(i)).unsqueeze(0)
            out.append(kaldi.fbank(wav - wav.mean(), htk_compat=True, sample_frequency=16000, use_energy=False,
                                   window_type="hanning", num_mel_bins=128, dither=0.0, frame_shift=10).numpy())
        return out
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------- a good corpus

def test_summary_and_attrs(built):
    manifest = Manifest.load(built["manifest_dir"])
    assert {k: built["summary"][k] for k in ("clips", "chunks", "chunks_run", "bad", "n_bad")} == \
        {"clips": 8, "chunks": 3, "chunks_run": 3, "bad": 0, "n_bad": 0}
    attrs = zarr.open_group(store=str(built["store"]), mode="r").attrs
    assert attrs["schema"] == SCHEMA and attrs["complete"] is True
    assert attrs["feature_config"] == CONFIG.to_dict()
    assert attrs["manifest_hash"] == manifest.in_store_order().hash()  # the rows in store order and attrs["manifest_name"] == "tiny"
    assert attrs["vocabulary"] == manifest.vocabulary.to_records() and attrs["multilabel"] is False
    assert (attrs["chunk_clips"], attrs["n_chunks"], attrs["n_bad"]) == (CHUNK, 3, 0)
    assert attrs["code_version"] and attrs["created"]
    assert pd.read_csv(bad_clips_path(built["store"])).empty


def test_arrays_follow_the_manifest(built):
    manifest = Manifest.load(built["manifest_dir"]).in_store_order()
    assert sorted(manifest.clips["clip_id"]) == sorted(Manifest.load(built["manifest_dir"]).clips["clip_id"])
    group = zarr.open_group(store=str(built["store"]), mode="r")
    n = len(manifest)
    assert group["fbank"].shape == (n, 100, 128) and group["fbank"].dtype == np.float16
    assert group["fbank"].chunks == (CHUNK, 100, 128)
    np.testing.assert_array_equal(read_strings(group["clip_id"]), manifest.clips["clip_id"])
    np.testing.assert_array_equal(read_strings(group["split"]), manifest.clips["split"])
    np.testing.assert_array_equal(group["fold"][:], manifest.clips["fold"])
    np.testing.assert_array_equal(group["weight"][:], manifest.clips["weight"].astype(np.float32))
    np.testing.assert_array_equal(group["targets"][:], manifest.targets())
    assert group["targets"][:].sum(axis=1).tolist() == [1] * n
    assert group["ok"][:].all() and group["chunk_done"][:].tolist() == [1, 1, 1]
    frames = [min(len(f), 100) for f in reference_features(manifest)]
    assert group["valid_frames"][:].tolist() == frames
    assert min(frames) < 100 and max(frames) == 100  # both padding and trimming happened


def test_fbank_and_statistics_match_an_independent_computation(built):
    """Stored rows are the AST loader's fbank rounded to float16 (so within the bound above); padding
    is zero; mean/std are numpy's over the valid frames of every good clip."""
    manifest = Manifest.load(built["manifest_dir"]).in_store_order()
    stored = zarr.open_group(store=str(built["store"]), mode="r")["fbank"][:]
    reference = reference_features(manifest)
    for row, ref in zip(stored, reference):
        kept = ref[:100]
        assert np.array_equal(row[:len(kept)], kept.astype(np.float16))
        error = np.abs(row[:len(kept)].astype(np.float64) - kept)
        assert np.all(error <= F16_REL * np.abs(kept) + F16_ABS) and error.max() < 0.016
        assert np.all(row[len(kept):] == 0)
    valid = np.concatenate([ref[:100] for ref in reference]).astype(np.float64)
    store = FeatureStore(built["store"])
    assert store.mean == pytest.approx(valid.mean(), rel=1e-6)
    assert store.std == pytest.approx(valid.std(), rel=1e-6)
    assert built["summary"]["mean"] == store.mean and built["summary"]["std"] == store.std


def test_reader_select_and_read(built):
    store = FeatureStore(built["store"])
    assert len(store) == 8 and store.n_classes == 3 and not store.multilabel
    assert store.normalization().to_dict() == {"mean": store.mean, "std": store.std, "divisor": 2.0}
    ids = lambda spec: sorted(store.clip_ids[store.select(spec)].tolist())  # noqa: E731
    assert ids("train") == ["a0", "a1", "b0", "c0"]
    assert ids("val, eval") == ["a2", "b1", "b2", "c1"]
    assert ids("fold==1") == ["a0", "a2", "b0", "c0"]
    assert ids("fold!=1") == ["a1", "b1", "b2", "c1"]
    assert ids("fold!=1&fold!=2") == []
    assert ids("all") == sorted(store.clip_ids.tolist())
    for spec, words in [("test", ["unknown split", "'test'", "eval", "train", "val"]),
                        ("fold==7", ["no clip has fold 7"]), ("fold==x", ["fold==K"])]:
        with pytest.raises(StoreError) as caught:
            store.select(spec)
        assert all(word in str(caught.value) for word in words), str(caught.value)
    everything = store.fbank[:]
    indices = np.array([7, 0, 4, 3])  # unsorted, across three chunks
    rows = store.read(indices)
    assert rows.dtype == np.float16 and rows.shape == (4, 100, 128)  # as stored: the caller casts
    np.testing.assert_array_equal(rows, everything[indices])
    as_float = store.read(indices, np.float32)
    assert as_float.dtype == np.float32 and np.array_equal(as_float, everything[indices].astype(np.float32))


@pytest.mark.parametrize("indices", [[2, 3, 4, 5], [5, 4, 3], [6, 1, 1, 6, 0], [7], list(range(8)), []],
                         ids=["run", "reversed", "repeats", "one", "all", "none"])
def test_read_returns_rows_in_the_order_given(built, indices, monkeypatch):
    from cmkd_pipe.pipeline.stores import feature_store

    store = FeatureStore(built["store"])
    expected = store.fbank[:][np.asarray(indices, dtype=int)]
    np.testing.assert_array_equal(store.read(indices), expected)
    monkeypatch.setattr(feature_store, "MAX_RUN_CHUNKS", 1)  # one slice per chunk: the grouping still holds
    np.testing.assert_array_equal(store.read(indices), expected)


def test_scattered_reads_slice_each_run_of_neighbouring_chunks_once():
    from cmkd_pipe.pipeline.stores.feature_store import _chunk_runs

    chunks = np.array([5, 0, 1, 1, 3, 9, 4])  # chunk of each row: runs 0-1, 3-5, 9
    assert [sorted(chunks[where].tolist()) for where in _chunk_runs(chunks)] == [[0, 1, 1], [3, 4, 5], [9]]


def test_read_names_rows_out_of_range(built):
    with pytest.raises(IndexError, match=r"features.zarr: rows must be in 0\.\.7, got 0\.\.8"):
        FeatureStore(built["store"]).read([0, 8])


def test_rerun_of_a_complete_store_runs_nothing(built):
    summary = run_features(built["manifest_dir"], built["store"], config=CONFIG, progress=False)
    assert summary["chunks_run"] == 0
    assert (summary["mean"], summary["std"]) == (built["summary"]["mean"], built["summary"]["std"])


def test_incomplete_store_is_refused(tmp_path, tiny_corpus):
    store = tmp_path / "partial.zarr"
    create_feature_store(store, Manifest.load(tiny_corpus), CONFIG, CHUNK)
    with pytest.raises(StoreError, match=r"incomplete \(3 of 3 chunks not done\).*rerun"):
        FeatureStore(store)
    with pytest.raises(StoreError, match="no Zarr store here"):
        FeatureStore(tmp_path / "absent.zarr")


def test_other_manifest_or_settings_need_overwrite(tmp_path, corpus_writer, tiny_clips, scheduler):
    manifest_dir = corpus_writer(tmp_path / "corpus", tiny_clips)
    store = tmp_path / "features.zarr"
    create_feature_store(store, Manifest.load(manifest_dir).in_store_order(), CONFIG, CHUNK)  # as a killed run leaves it
    other = corpus_writer(tmp_path / "other", tiny_clips[:-1])
    with pytest.raises(StoreError, match="another manifest.*--overwrite"):
        run_features(other, store, config=CONFIG, progress=False)
    with pytest.raises(StoreError, match=r"other feature settings \(target_frames: 50 != 100\).*--overwrite"):
        run_features(manifest_dir, store, config=FeatureConfig(target_frames=50), progress=False)
    summary = run_features(other, store, config=FeatureConfig(target_frames=50), chunk_clips=4,
                           scheduler=scheduler, overwrite=True, progress=False)
    assert (summary["clips"], summary["chunks"], summary["chunks_run"]) == (7, 2, 2)
    assert FeatureStore(store).fbank.shape == (7, 50, 128)


def test_a_foreign_folder_or_file_is_refused_even_with_overwrite(tmp_path, tiny_corpus):
    folder = tmp_path / "features.zarr"
    folder.mkdir()
    (folder / "thesis.tex").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(StoreError, match="exists and is not a features store.*"
                                             "choose another --out.*nothing was changed"):
            run_features(tiny_corpus, folder, config=CONFIG, overwrite=overwrite, progress=False)
    assert (folder / "thesis.tex").read_text() == "mine"
    afile = tmp_path / "afile"
    afile.write_text("mine")
    with pytest.raises(StoreError, match="exists and is not a folder"):
        run_features(tiny_corpus, afile, config=CONFIG, overwrite=True, progress=False)
    assert afile.read_text() == "mine"


# ---------------------------------------------------------------- bad clips

def test_bad_clips_are_reported_and_gate_completion(tmp_path, corpus_writer, tiny_clips, built, scheduler):
    bad = [{"clip_id": "corrupt", "audio": b"RIFF\x24\x00\x00\x00WAVEfmt garbage", "labels": ["b"]},
           {"clip_id": "missing", "audio": None, "labels": ["c"]},
           {"clip_id": "silent", "audio": np.zeros(16000, dtype=np.float32), "labels": ["a"]}]
    manifest_dir = corpus_writer(tmp_path / "corpus", tiny_clips[:4] + bad + tiny_clips[4:])
    store = tmp_path / "features.zarr"
    with pytest.raises(TooManyBadClips) as caught:
        run_features(manifest_dir, store, config=CONFIG, chunk_clips=CHUNK, scheduler=scheduler,
                     max_bad_fraction=0.2, progress=False)
    message = str(caught.value)
    assert "\n" not in message
    assert all(word in message for word in ["3 of 11", "27.3%", "20.0%", "bad_clips.csv", "--max-bad-fraction"])

    table = pd.read_csv(bad_clips_path(store))
    assert table["clip_id"].tolist() == ["corrupt", "missing", "silent"]
    assert table["path"].tolist() == ["audio/corrupt.wav", "audio/missing.wav", "audio/silent.wav"]
    assert [r.split(":")[0] for r in table["reason"]] == ["unreadable", "missing", "silent"]
    group = zarr.open_group(store=str(store), mode="r")
    assert group.attrs["complete"] is False and group["chunk_done"][:].all()
    bad_rows = np.flatnonzero(~group["ok"][:])
    assert sorted(read_strings(group["clip_id"])[bad_rows]) == ["corrupt", "missing", "silent"]
    assert not group["fbank"].get_orthogonal_selection((bad_rows,)).any()
    assert not group["valid_frames"][:][bad_rows].any()
    with pytest.raises(StoreError, match="incomplete"):
        FeatureStore(store)

    summary = run_features(manifest_dir, store, config=CONFIG, scheduler=scheduler, max_bad_fraction=0.3,
                           progress=False)
    assert (summary["chunks_run"], summary["n_bad"]) == (0, 3)
    finished = FeatureStore(store)
    assert "silent" not in finished.clip_ids[finished.select("all")]
    good = FeatureStore(built["store"])  # same 8 good clips: same statistics
    assert (finished.mean, finished.std) == pytest.approx((good.mean, good.std), rel=1e-9)


# ---------------------------------------------------------------- resume after SIGKILL

def _chunk_done(store: Path) -> np.ndarray | None:
    """The store's done markers, or None while it does not exist yet."""
    if not (store / "zarr.json").is_file():
        return None
    return zarr.open_group(store=str(store), mode="r")["chunk_done"][:]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs Linux /proc to watch the process group")
def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path, corpus_writer, make_tone, scheduler):
    clips = [{"clip_id": f"long{i:02d}", "labels": ["abc"[i % 3]], "sr": 44100,
              "audio": make_tone(300.0 + 37 * i, 2.0, 44100, 0.3, channels=2, noise=0.1, seed=i)}
             for i in range(60)]
    manifest_dir = corpus_writer(tmp_path / "corpus", clips)
    store = tmp_path / "killed.zarr"
    command = cli("features", "--manifest", str(manifest_dir), "--out", str(store), "--target-frames", "100",
                   "--scheduler", "synchronous", "--chunk-clips", "2")
    with open(tmp_path / "first.log", "wb") as log:
        first = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            assert first.poll() is None, "the run ended before it could be killed: " + \
                (tmp_path / "first.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "no chunk finished in time"
            done = _chunk_done(store)
            if done is not None and 0 < done.sum() < len(done):
                break
            time.sleep(0.05)
    finally:
        kill_group(first)

    group = zarr.open_group(store=str(store), mode="r")
    pending = len(pending_chunks(group))
    assert group.attrs["complete"] is False and 0 < pending < 30
    with pytest.raises(StoreError, match="incomplete"):
        FeatureStore(store)

    second = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    summary = json.loads(second.stdout)
    assert (summary["chunks_run"], summary["chunks"], summary["bad"]) == (pending, 30, 0)

    reference = tmp_path / "reference.zarr"
    run_features(manifest_dir, reference, config=CONFIG, chunk_clips=2, scheduler=scheduler, progress=False)
    resumed, uninterrupted = FeatureStore(store), FeatureStore(reference)
    assert np.array_equal(resumed.fbank[:].view(np.uint16), uninterrupted.fbank[:].view(np.uint16))
    for name in ("valid_frames", "ok", "chunk_stats"):
        np.testing.assert_array_equal(resumed.group[name][:], uninterrupted.group[name][:])
    assert (resumed.mean, resumed.std) == (uninterrupted.mean, uninterrupted.std)


# ---------------------------------------------------------------- codec

def test_the_default_codec_is_recorded_and_used(built):
    store = FeatureStore(built["store"])
    assert built["summary"]["codec"] == store.codec == store.group.attrs["codec"] == DEFAULT_CODEC
    assert store.fbank.compressors == compressors(DEFAULT_CODEC)  # what zarr reads the chunks with
    assert TrainingFeatures().codec == DEFAULT_CODEC  # the preset field's default is the stage's


def test_an_explicit_codec_changes_bytes_not_values(tmp_path, built, scheduler):
    store = tmp_path / "raw.zarr"
    summary = run_features(built["manifest_dir"], store, config=CONFIG, chunk_clips=CHUNK, scheduler=scheduler,
                           codec="none", progress=False)
    raw, default = FeatureStore(store), FeatureStore(built["store"])
    assert summary["codec"] == raw.codec == "none" and raw.fbank.compressors == ()
    np.testing.assert_array_equal(raw.read(np.arange(len(raw))), default.read(np.arange(len(default))))
    assert (raw.mean, raw.std) == (default.mean, default.std)
    assert raw.fingerprint == default.fingerprint  # the codec is not part of the store's identity
    size = lambda path: sum(f.stat().st_size for f in (path / "fbank").rglob("c/**/*") if f.is_file())
    assert size(built["store"]) < size(store)


def test_a_store_from_before_the_codec_setting_reads_and_resumes(tmp_path, built, scheduler, monkeypatch):
    """Written as before `features.codec`: zarr's default compressor and no `codec` attribute."""
    import cmkd_pipe.pipeline.stores.feature_store as fs

    store = tmp_path / "old.zarr"
    with monkeypatch.context() as patch:
        patch.setattr(fs, "compressors", lambda name: "auto")  # create_array's default, as the old code had it
        run_features(built["manifest_dir"], store, config=CONFIG, chunk_clips=CHUNK, scheduler=scheduler,
                     progress=False)
    group = zarr.open_group(store=str(store), mode="r+")
    del group.attrs["codec"]
    old, default = FeatureStore(store), FeatureStore(built["store"])
    assert old.codec == ZARR_DEFAULT and old.fbank.compressors == compressors(ZARR_DEFAULT)
    np.testing.assert_array_equal(old.read([5, 0, 7]), default.read([5, 0, 7]))
    summary = run_features(built["manifest_dir"], store, config=CONFIG, scheduler=scheduler, progress=False)
    assert summary["chunks_run"] == 0 and summary["codec"] == ZARR_DEFAULT  # resumed as it was written


def test_an_unknown_codec_is_one_line_naming_the_known_ones(tmp_path, tiny_corpus):
    with pytest.raises(ValueError, match=r"features.codec 'lzma': unknown; known: none, zstd-1, .*blosc-lz4"):
        run_features(tiny_corpus, tmp_path / "f.zarr", config=CONFIG, codec="lzma", progress=False)
    assert not (tmp_path / "f.zarr").exists()
    with pytest.raises(ValueError, match=r"features.codec = 'lzma'; choose one of \['none'"):
        resolve_config("demo", ["features.codec=lzma"])


# ---------------------------------------------------------------- CLI

def test_cli_help():
    result = subprocess.run(cli("features", "--help"), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert all(option in result.stdout for option in ["--manifest", "--out", "--chunk-clips", "--workers"])


def test_cli_bad_manifest_path_is_one_line_and_exit_1(tmp_path):
    absent = tmp_path / "no-such-manifest"
    result = subprocess.run(cli("features", "--manifest", str(absent), "--out", str(tmp_path / "f.zarr")),
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and str(absent) in lines[0], result.stderr
    assert "manifest.json" in lines[0]
    assert not (tmp_path / "f.zarr").exists()
