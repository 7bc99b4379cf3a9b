"""The built-in demo corpus: determinism, fold balance, manifest validity, audio properties, multi-label mixes."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from cmkd_pipe.data_manifests.demo import DEMO_CLASSES, make_demo_corpus
from cmkd_pipe.data_manifests.demo.synth import SYNTHS
from cmkd_pipe.data_manifests.builders import build_manifest
from cmkd_pipe.data_manifests.manifest import Manifest, ManifestError, balanced_weights

SMALL = dict(clips_per_class=4, n_folds=2, clip_seconds=1.0, sample_rate=16000)
IDS = [class_id for class_id, _ in DEMO_CLASSES]


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> tuple[Path, Manifest]:
    out = tmp_path_factory.mktemp("demo")
    return out, make_demo_corpus(out, seed=3, **SMALL)


@pytest.fixture(scope="module")
def multi(tmp_path_factory) -> tuple[Path, Manifest]:
    out = tmp_path_factory.mktemp("demo_ml")
    return out, make_demo_corpus(out, multilabel=True, seed=3, **SMALL)


def _wav_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "audio").glob("*.wav"))}


def test_same_seed_gives_identical_bytes_and_another_seed_different_audio(single, tmp_path):
    out, manifest = single
    again = make_demo_corpus(tmp_path / "again", seed=3, **SMALL)
    assert _wav_bytes(tmp_path / "again") == _wav_bytes(out)
    for name in ("clips.csv", "vocabulary.csv"):
        assert (tmp_path / "again/manifest" / name).read_bytes() == (out / "manifest" / name).read_bytes()
    assert again.hash() == manifest.hash()

    make_demo_corpus(tmp_path / "other", seed=4, **SMALL)
    other, first = _wav_bytes(tmp_path / "other"), _wav_bytes(out)
    assert other.keys() == first.keys()
    assert all(other[name] != first[name] for name in first)


def test_classes_and_folds_are_balanced(single):
    _, manifest = single
    clips = manifest.clips
    assert len(IDS) >= 10 and len(set(IDS)) == len(IDS)
    assert len(manifest) == len(IDS) * SMALL["clips_per_class"]
    assert list(manifest.vocabulary.ids) == IDS
    assert list(manifest.vocabulary.names) == [name for _, name in DEMO_CLASSES]
    per_class_fold = Counter((labels[0], fold) for labels, fold in zip(clips["labels"], clips["fold"]))
    assert per_class_fold == {(c, f): 2 for c in IDS for f in (1, 2)}
    assert set(clips["split"]) == {"train"} and set(clips["weight"]) == {1.0}
    assert all(len(labels) == 1 for labels in clips["labels"])


def test_saved_manifest_loads_validates_and_matches(single):
    out, manifest = single
    loaded = Manifest.load(out / "manifest")
    assert loaded.name == "demo" and not loaded.multilabel
    assert loaded.root == out.resolve()
    assert loaded.hash() == manifest.hash()
    assert all(path == f"audio/{clip_id}.wav" for clip_id, path in zip(loaded.clips["clip_id"], loaded.clips["path"]))
    assert all(loaded.audio_path(i).is_file() for i in range(len(loaded)))


def test_audio_is_mono_16bit_full_length_finite_and_audible(single):
    out, manifest = single
    for i in range(len(manifest)):
        path = manifest.audio_path(i)
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.frames, info.subtype) == (16000, 1, 16000, "PCM_16"), path
        audio, _ = sf.read(path, dtype="float32")
        assert np.all(np.isfinite(audio))
        assert 0.25 <= np.max(np.abs(audio)) <= 1.0, path
        assert np.std(audio) > 1e-3, path


def test_multilabel_variant_mixes_one_to_three_distinct_classes(multi):
    out, manifest = multi
    loaded = Manifest.load(out / "manifest")
    assert loaded.multilabel and loaded.name == "demo-multilabel"
    counts = loaded.clips["labels"].map(len)
    assert counts.between(1, 3).all() and (counts >= 2).any()
    assert all(len(set(labels)) == len(labels) and set(labels) <= set(IDS) for labels in loaded.clips["labels"])
    assert len(loaded) == len(IDS) * SMALL["clips_per_class"]
    assert Counter(loaded.clips["fold"]) == {1: len(loaded) // 2, 2: len(loaded) // 2}
    np.testing.assert_allclose(loaded.clips["weight"], balanced_weights(list(loaded.clips["labels"])))
    audio, sr = sf.read(loaded.audio_path(0), dtype="float32")
    assert sr == 16000 and audio.shape == (16000,) and np.max(np.abs(audio)) <= 1.0


@pytest.mark.parametrize("sample_rate", [8000, 16000])
def test_every_class_makes_an_audible_finite_event(sample_rate):
    for (class_id, _), synth in zip(DEMO_CLASSES, SYNTHS, strict=True):
        for i in range(8):
            event = synth(np.random.default_rng([sample_rate, i]), sample_rate, sample_rate)
            assert 0 < len(event) <= sample_rate, class_id
            assert np.all(np.isfinite(event)) and np.sqrt(np.mean(event ** 2)) > 1e-3, class_id


def test_uneven_folds_are_refused(tmp_path):
    with pytest.raises(ValueError, match="multiple of n_folds"):
        make_demo_corpus(tmp_path, clips_per_class=7, n_folds=5)


def test_manifest_kind_demo_writes_the_corpus_once_then_loads_it(tmp_path):
    """`cmkd-pipe manifest demo ROOT` goes through the builder registry like every other corpus kind."""
    built = build_manifest("demo", tmp_path, clips_per_class=5, seed=3)
    assert len(built) == 5 * len(IDS) and (tmp_path / "manifest" / "manifest.json").is_file()
    wavs = _wav_bytes(tmp_path)
    again = build_manifest("demo", tmp_path, clips_per_class=5, seed=4)  # an existing corpus is loaded as is
    assert again.hash() == built.hash() and _wav_bytes(tmp_path) == wavs
    with pytest.raises(ManifestError, match="takes no option"):
        build_manifest("demo", tmp_path / "other", loudness=1)
