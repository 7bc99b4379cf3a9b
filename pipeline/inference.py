"""Tagging audio of any length with a trained model: windows, batched scoring, pooling, top-k.

A file is decoded and resampled as in training (`pipeline.audio.load_audio`). It is cut into windows of
the model's input length (`target_frames`) every `hop` frames; the last window is aligned to the end of
the file so every frame is seen and no window is padded, except a file shorter than one window, which
is zero-padded as in training. Window scores are sigmoid (multi-label) or softmax (single-label) of the
logits; the clip score is their mean or max. Two scorers: a cmkd-pipe checkpoint (torch, fbank by
`pipeline.features` exactly as training) and an exported ONNX model (`pipeline.onnx_scorer`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from cmkd_pipe.pipeline.config import FeatureConfig, Normalization

POOLS = ("mean", "max")


@dataclass(frozen=True)
class Windowing:
    """Where windows start, in frames, and how frames map to seconds."""

    window: int  # frames per window (the model's target_frames)
    hop: int  # frames between window starts
    shift_s: float  # seconds between frames
    length_s: float  # seconds one frame covers

    def starts(self, n_frames: int) -> list[int]:
        """Start frames: 0, hop, 2·hop, … and a last window aligned to the end; [0] for a short clip."""
        if n_frames <= self.window:
            return [0]
        last = n_frames - self.window
        starts = list(range(0, last + 1, self.hop))
        if starts[-1] != last:
            starts.append(last)
        return starts

    def seconds(self, start: int, n_frames: int) -> tuple[float, float]:
        """(start, end) in seconds of the window starting at `start` in a clip of `n_frames` frames."""
        last = min(start + self.window, n_frames) - 1
        return start * self.shift_s, last * self.shift_s + self.length_s


def windowing(config: FeatureConfig, hop: int | None = None) -> Windowing:
    """The windowing of a feature config; `hop` defaults to half a window."""
    hop = hop if hop is not None else max(1, config.target_frames // 2)
    if hop < 1:
        raise ValueError(f"--hop must be at least 1 frame, got {hop}")
    return Windowing(config.target_frames, hop, config.frame_shift_ms / 1000.0, config.frame_length_ms / 1000.0)


def frame_windows(features: np.ndarray, starts: list[int], window: int) -> np.ndarray:
    """Stack [len(starts), window, bins] of fbank frames [n, bins], zero-padding a short clip."""
    out = np.zeros((len(starts), window, features.shape[1]), dtype=np.float32)
    for i, start in enumerate(starts):
        part = features[start:start + window]
        out[i, : len(part)] = part
    return out


def n_frames(n_samples: int, config: FeatureConfig) -> int:
    """Frames Kaldi makes of `n_samples` (snip_edges): 1 + (n - window) // shift, 0 when too short."""
    if n_samples < config.window_samples:
        return 0
    return 1 + (n_samples - config.window_samples) // config.shift_samples


def sample_windows(waveform: np.ndarray, starts: list[int], config: FeatureConfig) -> list[np.ndarray]:
    """The samples behind each frame window: frames start..start+T-1 come from exactly these samples."""
    return [waveform[start * config.shift_samples: start * config.shift_samples + config.input_samples]
            for start in starts]


def pool(scores: np.ndarray, how: str) -> np.ndarray:
    """Clip scores [K] from window scores [W, K]: their mean or max."""
    if how not in POOLS:
        raise ValueError(f"--pool {how!r}: use one of {', '.join(POOLS)}")
    return scores.mean(axis=0) if how == "mean" else scores.max(axis=0)


def top_k(scores: np.ndarray, k: int) -> list[int]:
    """Indices of the k highest scores, best first (ties: lower index first)."""
    order = np.argsort(-scores, kind="stable")
    return [int(i) for i in order[: max(k, 0)]]


@dataclass(frozen=True)
class Label:
    index: int
    id: str
    name: str


@dataclass
class ClipTags:
    """What a model says about one file: per-window scores, the pooled clip scores and the top labels."""

    path: str
    duration_s: float
    windows: list[tuple[float, float]]  # (start, end) seconds
    window_scores: np.ndarray  # [W, K]
    scores: np.ndarray  # [K], pooled
    labels: list[Label] = field(repr=False)

    def top(self, k: int = 5) -> list[dict[str, Any]]:
        """[{id, name, score}] of the k best labels of the clip."""
        return [self._entry(i, self.scores) for i in top_k(self.scores, k)]

    def timeline(self, k: int = 3) -> list[dict[str, Any]]:
        """One entry per window: {start_s, end_s, top: [{id, name, score}]}."""
        return [{"start_s": round(start, 3), "end_s": round(end, 3),
                 "top": [self._entry(i, row) for i in top_k(row, k)]}
                for (start, end), row in zip(self.windows, self.window_scores)]

    def _entry(self, index: int, scores: np.ndarray) -> dict[str, Any]:
        label = self.labels[index]
        return {"id": label.id, "name": label.name, "score": float(scores[index])}


class Scorer(Protocol):
    """Turns one audio file into window logits."""

    feature_config: FeatureConfig
    labels: list[Label]
    multilabel: bool

    def window_logits(self, waveform: np.ndarray, starts: list[int], batch_size: int) -> np.ndarray:
        """Logits [len(starts), K] of the windows starting at `starts` (frames) of a mono waveform."""


class CheckpointScorer:
    """A cmkd-pipe checkpoint: fbank of the whole file exactly as in training, windows of frames, the model."""

    def __init__(self, path: str | os.PathLike, *, device: str | None = None, multilabel: bool | None = None) -> None:
        import torch

        from cmkd_pipe.pipeline.models.checkpoint import load_checkpoint

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model, meta = load_checkpoint(path, map_location=self.device)
        self.model = model.eval()
        self.feature_config = FeatureConfig.from_dict(meta["feature_config"])
        self.norm = Normalization.from_dict(meta["normalization"])
        self.labels = labels_of(meta["vocabulary"])
        self.multilabel = checkpoint_multilabel(meta, path) if multilabel is None else multilabel

    def window_logits(self, waveform: np.ndarray, starts: list[int], batch_size: int) -> np.ndarray:
        import torch

        from cmkd_pipe.pipeline.features import fbank, normalize

        features = fbank(torch.from_numpy(waveform), self.feature_config).numpy()
        out = []
        with torch.inference_mode():
            for i in range(0, len(starts), batch_size):  # windows stacked a batch at a time: long files fit
                windows = frame_windows(features, starts[i:i + batch_size], self.feature_config.target_frames)
                x = normalize(torch.from_numpy(windows).to(self.device), self.norm)
                out.append(self.model(x).float().cpu().numpy())
        return np.concatenate(out)


def labels_of(vocabulary: list[dict]) -> list[Label]:
    """Labels in class-index order from vocabulary records {index, id, name}."""
    records = sorted(vocabulary, key=lambda r: int(r["index"]))
    return [Label(int(r["index"]), str(r["id"]), str(r["name"])) for r in records]


def checkpoint_multilabel(meta: dict[str, Any], path: str | os.PathLike) -> bool:
    """Whether a checkpoint's model is multi-label: recorded in it (top level or `extra`), else in the
    feature store it was trained on (when that store is still there)."""
    extra = meta.get("extra") or {}
    for source in (meta, extra):
        if isinstance(source.get("multilabel"), bool):
            return source["multilabel"]
    store = extra.get("feature_store")
    if store:
        from cmkd_pipe.pipeline.stores.feature_store import FeatureStore

        try:
            return FeatureStore(store).multilabel
        except Exception:  # noqa: BLE001 - a moved or unreadable store only means "unknown"
            pass
    raise ValueError(f"{path}: the checkpoint does not record whether its model is multi-label; "
                     "pass --multilabel or --single-label")


class Tagger:
    """Tag audio files with a scorer: `Tagger(scorer).tag("x.wav")` -> ClipTags."""

    def __init__(self, scorer: Scorer, *, hop: int | None = None, pool: str = "mean", batch_size: int = 16) -> None:
        if pool not in POOLS:
            raise ValueError(f"pool {pool!r}: use one of {', '.join(POOLS)}")
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.scorer = scorer
        self.windowing = windowing(scorer.feature_config, hop)
        self.pool = pool
        self.batch_size = batch_size

    @property
    def labels(self) -> list[Label]:
        return self.scorer.labels

    @property
    def multilabel(self) -> bool:
        return self.scorer.multilabel

    def tag(self, path: str | os.PathLike) -> ClipTags:
        """Tags of one file; raises `pipeline.audio.AudioError` for a file that cannot be decoded."""
        from cmkd_pipe.pipeline.audio import load_audio
        from cmkd_pipe.pipeline.predict import probabilities

        config = self.scorer.feature_config
        waveform = load_audio(path, config.sample_rate).numpy()
        frames = n_frames(len(waveform), config)
        starts = self.windowing.starts(frames)
        logits = self.scorer.window_logits(waveform, starts, self.batch_size)
        window_scores = probabilities(logits, self.scorer.multilabel)  # numpy in, float32 numpy out
        return ClipTags(str(path), len(waveform) / config.sample_rate,
                        [self.windowing.seconds(s, frames) for s in starts], window_scores,
                        pool(window_scores, self.pool), self.scorer.labels)


def load_scorer(model: str | os.PathLike, *, device: str | None = None,
                multilabel: bool | None = None) -> Scorer:
    """A scorer for a cmkd-pipe checkpoint (.pt) or an exported ONNX model (folder or .onnx file)."""
    path = Path(model)
    if path.is_dir() or path.suffix == ".onnx":
        from cmkd_pipe.pipeline.onnx_scorer import OnnxScorer

        return OnnxScorer(path, multilabel=multilabel)
    return CheckpointScorer(path, device=device, multilabel=multilabel)
