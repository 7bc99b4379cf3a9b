"""A tiny CNN that has really learned three tone classes, saved as a cmkd-pipe checkpoint (for tag/export tests).

Classes low (350 Hz), mid (1400 Hz) and high (4200 Hz): noisy tones with random pitch (±8 %), level and
length, featurised exactly as training does (pipeline.features), 0.64-s windows (64 frames x 32 bins).
The model is trained until it classifies a fresh held-out set perfectly, so a test that reads its
output cannot pass by chance.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from cmkd_pipe.pipeline.config import FeatureConfig, Normalization
from cmkd_pipe.pipeline.features import clip_features, normalize
from cmkd_pipe.pipeline.models.checkpoint import save_checkpoint
from cmkd_pipe.pipeline.models.factory import build_model

TONE_CLASSES = {"low": 350.0, "mid": 1400.0, "high": 4200.0}
VOCABULARY = [{"index": i, "id": cid, "name": f"{cid.title()} tone"} for i, cid in enumerate(TONE_CLASSES)]
FEATURES = FeatureConfig(num_mel_bins=32, target_frames=64)
SR = 16000
SEGMENTS = ["low", "mid", "high", "mid", "low", "high"]  # 10 s each: the 60-s test file
SEGMENT_S = 10.0
LONG_FILE_SR = 22050  # not the model's rate: tagging resamples as training did


def tone_wave(freq: float, seconds: float, rng: np.random.Generator, sr: int = SR) -> np.ndarray:
    """A noisy tone of `freq` Hz with a random level, float32."""
    t = np.arange(int(seconds * sr)) / sr
    wave = rng.uniform(0.1, 0.6) * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi))
    return (wave + rng.uniform(0.005, 0.03) * rng.standard_normal(len(t))).astype(np.float32)


def _examples(n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for i in range(n):
        label = i % len(TONE_CLASSES)
        freq = list(TONE_CLASSES.values())[label] * rng.uniform(0.92, 1.08)
        wave = tone_wave(freq, rng.uniform(0.3, 1.0), rng)
        xs.append(clip_features(torch.from_numpy(wave), FEATURES)[0])
        ys.append(label)
    return torch.stack(xs), torch.tensor(ys)


def train_tone_model(path: Path, arch: str = "timm:test_efficientnet", seed: int = 0) -> Path:
    """Train the tone classifier and save it as a checkpoint at `path` (single-label)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is several times faster on a shared machine
    try:
        return _train(path, arch, seed)
    finally:
        torch.set_num_threads(threads)


def _train(path: Path, arch: str, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    x, y = _examples(96, rng)
    norm = Normalization(float(x.mean()), float(x.std()), 2.0)
    model = build_model({"arch": arch}, len(TONE_CLASSES), FEATURES.num_mel_bins, FEATURES.target_frames)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    held_x, held_y = _examples(30, np.random.default_rng(seed + 1))
    for epoch in range(30):
        model.train()
        for batch in torch.randperm(len(x)).split(16):
            loss = torch.nn.functional.cross_entropy(model(normalize(x[batch], norm)), y[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        model.eval()
        with torch.no_grad():
            if epoch >= 2 and bool((model(normalize(held_x, norm)).argmax(1) == held_y).all()):
                break
    else:
        raise AssertionError("the tone model did not learn the three tones")
    return save_checkpoint(path, model, feature_config=FEATURES.to_dict(), normalization=norm.to_dict(),
                           vocabulary=VOCABULARY, extra={"arch": arch, "multilabel": False})


@pytest.fixture(scope="session")
def tone_checkpoint(tmp_path_factory) -> Path:
    """The trained tone model's checkpoint (import this fixture into a test module to use it)."""
    return train_tone_model(tmp_path_factory.mktemp("tone-model") / "final.pt")


@pytest.fixture(scope="session")
def long_file(tmp_path_factory) -> Path:
    """A 60-s FLAC at 22.05 kHz: 10-s segments of the tone classes in the order of SEGMENTS."""
    rng = np.random.default_rng(7)
    wave = np.concatenate([tone_wave(TONE_CLASSES[c], SEGMENT_S, rng, sr=LONG_FILE_SR) for c in SEGMENTS])
    path = tmp_path_factory.mktemp("long") / "sixty.flac"
    sf.write(path, wave, LONG_FILE_SR)
    return path
