"""Shared fixtures: tiny on-disk corpora (wav files + a manifest folder) built in tmp folders.

A clip is described by a dict, so a test can ask for exactly the audio it needs:

    {"clip_id": "a0", "labels": ["a"], "split": "train", "fold": 1,
     "audio": ndarray [samples] or [samples, channels] | bytes (written as is) | None (file not written),
     "sr": 16000, "subtype": "PCM_16"}

Only `clip_id` and `audio` are required; the rest default as shown (labels default to ["a"]).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from cmkd_pipe.data_manifests.manifest import Manifest, Vocabulary
from cmkd_pipe.pipeline.parallel import SYNCHRONOUS

TINY_CLASSES = ("a", "b", "c")

CorpusWriter = Callable[..., Path]


def tone(freq: float, seconds: float, sr: int, amplitude: float = 0.5, channels: int = 1,
         noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """A sine of `freq` Hz (plus optional white noise), float32, [samples] or [samples, channels]."""
    t = np.arange(int(round(seconds * sr))) / sr
    wave = amplitude * np.sin(2 * np.pi * freq * t)
    if noise:
        wave = wave + noise * np.random.default_rng(seed).standard_normal(len(t))
    wave = wave.astype(np.float32)
    return wave if channels == 1 else np.repeat(wave[:, None], channels, axis=1)


def default_tiny_clips() -> list[dict[str, Any]]:
    """Eight good clips over three classes, three splits and two folds, mixing sample rates (8 k, 16 k,
    44.1 k, 48 k), mono and stereo, and lengths below and above 1 s (100 frames at a 10 ms shift)."""
    layout = [  # clip_id, label, split, fold, sr, channels, seconds, freq
        ("a0", "a", "train", 1, 16000, 1, 1.3, 440.0),
        ("a1", "a", "train", 2, 44100, 2, 0.7, 523.0),
        ("b0", "b", "train", 1, 48000, 1, 1.0, 1000.0),
        ("b1", "b", "val", 2, 8000, 1, 0.6, 1500.0),
        ("c0", "c", "train", 1, 16000, 2, 1.5, 2500.0),
        ("c1", "c", "val", 2, 22050, 1, 0.9, 3100.0),
        ("a2", "a", "eval", 1, 16000, 1, 1.1, 660.0),
        ("b2", "b", "eval", 2, 44100, 1, 0.8, 1250.0),
    ]
    return [{"clip_id": cid, "labels": [label], "split": split, "fold": fold, "sr": sr,
             "audio": tone(freq, seconds, sr, channels=channels, noise=0.05, seed=i)}
            for i, (cid, label, split, fold, sr, channels, seconds, freq) in enumerate(layout)]


def write_corpus(root: Path, clips: list[dict[str, Any]] | None = None, *, name: str = "tiny",
                 classes: tuple[str, ...] = TINY_CLASSES, multilabel: bool = False) -> Path:
    """Write `root/audio/<clip_id>.wav` for each clip and the manifest folder `root/manifest`; return it."""
    clips = default_tiny_clips() if clips is None else clips
    (root / "audio").mkdir(parents=True, exist_ok=True)
    rows = []
    for clip in clips:
        path = f"audio/{clip['clip_id']}.wav"
        audio = clip["audio"]
        if isinstance(audio, bytes):
            (root / path).write_bytes(audio)
        elif audio is not None:
            sf.write(root / path, audio, clip.get("sr", 16000), subtype=clip.get("subtype", "PCM_16"))
        rows.append({"clip_id": clip["clip_id"], "path": path, "labels": list(clip.get("labels", ["a"])),
                     "split": clip.get("split", "train"), "fold": clip.get("fold", 1), "weight": 1.0})
    vocabulary = Vocabulary(tuple(classes), tuple(c.upper() for c in classes))
    manifest = Manifest(name, pd.DataFrame(rows), vocabulary, multilabel, root)
    return manifest.save(root / "manifest")


def save_random_model(path: Path, store: Any, model_config: dict[str, Any], *, seed: int = 0,
                      weight_std: float | None = 0.5, normalization: Any = None) -> tuple[Any, Any]:
    """A randomly initialised model for a FeatureStore's input shape and classes, saved at `path` as a
    checkpoint, as a trained teacher would be. weight_std: every weight drawn from N(0, weight_std), large
    enough that the logits clearly depend on the input (None: the model's own init). normalization:
    default the store's statistics with divisor 2. Returns (model in eval mode, normalization)."""
    import torch

    from cmkd_pipe.pipeline.config import Normalization
    from cmkd_pipe.pipeline.models.checkpoint import save_checkpoint
    from cmkd_pipe.pipeline.models.factory import build_model

    features = store.feature_config
    torch.manual_seed(seed)
    model = build_model(model_config, store.n_classes, features.num_mel_bins, features.target_frames)
    if weight_std is not None:
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.normal_(0.0, weight_std)
    norm = normalization or Normalization(store.mean, store.std, 2.0)
    save_checkpoint(path, model, feature_config=features.to_dict(), normalization=norm.to_dict(),
                    vocabulary=store.vocabulary)
    return model.eval(), norm


@pytest.fixture(scope="session")
def random_teacher() -> Callable[..., tuple[Any, Any]]:
    """`save_random_model(path, store, model_config, *, seed=0, weight_std=0.5, normalization=None)
    -> (model, normalization)`: a random teacher checkpoint for a feature store (see save_random_model)."""
    return save_random_model


@pytest.fixture(scope="session")
def corpus_writer() -> CorpusWriter:
    """`write_corpus(root, clips=None, *, name, classes, multilabel) -> manifest folder`, for any scope."""
    return write_corpus


@pytest.fixture
def tiny_corpus(tmp_path: Path) -> Path:
    """Manifest folder of the eight default clips (see `default_tiny_clips`) under tmp_path/corpus."""
    return write_corpus(tmp_path / "corpus")


@pytest.fixture(scope="session")
def make_tone() -> Callable[..., np.ndarray]:
    """`tone(freq, seconds, sr, amplitude=0.5, channels=1, noise=0.0, seed=0) -> float32 ndarray`."""
    return tone


@pytest.fixture
def tiny_clips() -> list[dict[str, Any]]:
    """A fresh list of the default clip dicts (see `default_tiny_clips`), to edit and pass to write_corpus."""
    return default_tiny_clips()


@pytest.fixture(scope="session")
def scheduler() -> str:
    """The `scheduler=` for in-process stage runs: every task in the test process, no worker start-up.
    Tests where a real cluster is the point take `dask_cluster` instead."""
    return SYNCHRONOUS


@pytest.fixture(scope="session")
def dask_cluster() -> Iterator[str]:
    """Address of the test session's one Dask LocalCluster (2 worker processes, started on first use), made
    as the stages make theirs (pipeline.parallel.local_cluster)."""
    from cmkd_pipe.pipeline.parallel import local_cluster

    with local_cluster(n_workers=2) as cluster:
        yield cluster.scheduler_address
