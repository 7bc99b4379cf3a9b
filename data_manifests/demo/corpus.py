"""Built-in demo corpus: seeded synthetic clips (data_manifests/demo/synth.py) written as wav files + a manifest."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from cmkd_pipe.data_manifests.demo.synth import DEMO_CLASSES, Rng, render_clip
from cmkd_pipe.data_manifests.manifest import Manifest, Vocabulary, balanced_weights


def make_demo_corpus(out_dir: Path, *, multilabel: bool = False, clips_per_class: int = 80, n_folds: int = 5,
                     clip_seconds: float = 2.0, sample_rate: int = 16000, seed: int = 0) -> Manifest:
    """Write `out_dir/audio/<clip_id>.wav` and the manifest folder `out_dir/manifest`; return the manifest.

    Folds 1..n_folds hold every class equally often (by the clip's first event for the multi-label
    variant). The same arguments give byte-identical files.
    """
    if clips_per_class < 1 or n_folds < 1 or clips_per_class % n_folds:
        raise ValueError(f"demo corpus: clips_per_class ({clips_per_class}) must be a positive multiple of "
                         f"n_folds ({n_folds}) so every fold holds every class equally often")
    if clip_seconds < 0.5:
        raise ValueError(f"demo corpus: clip_seconds ({clip_seconds}) must be at least 0.5")
    if sample_rate < 8000:
        raise ValueError(f"demo corpus: sample_rate ({sample_rate}) must be at least 8000")
    out_dir = Path(out_dir)
    (out_dir / "audio").mkdir(parents=True, exist_ok=True)
    n_samples = int(round(clip_seconds * sample_rate))
    ids = [class_id for class_id, _ in DEMO_CLASSES]
    rows = []
    for c, class_id in enumerate(ids):
        for k in range(clips_per_class):
            index = c * clips_per_class + k
            rng = np.random.default_rng([seed, int(multilabel), index])
            classes = _pick_classes(rng, c, len(ids)) if multilabel else [c]
            audio = render_clip(rng, classes, sample_rate, n_samples, background_events=not multilabel)
            clip_id = f"mix-{index:04d}" if multilabel else f"{class_id}-{k:03d}"
            path = f"audio/{clip_id}.wav"
            _write_wav(out_dir / path, audio, sample_rate)
            rows.append({"clip_id": clip_id, "path": path, "labels": [ids[i] for i in sorted(classes)],
                         "split": "train", "fold": k % n_folds + 1})
    clips = pd.DataFrame(rows)
    clips["weight"] = balanced_weights(list(clips["labels"])) if multilabel else 1.0
    vocabulary = Vocabulary(tuple(ids), tuple(name for _, name in DEMO_CLASSES))
    name = "demo-multilabel" if multilabel else "demo"
    manifest = Manifest(name, clips, vocabulary, multilabel, out_dir).validate()
    manifest.save(out_dir / "manifest")
    return manifest


def _write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    """16-bit PCM mono WAV, encoded in memory (soundfile's file flush would fsync every clip)."""
    buffer = io.BytesIO()
    sf.write(buffer, audio, sample_rate, subtype="PCM_16", format="WAV")
    path.write_bytes(buffer.getvalue())


def _pick_classes(rng: Rng, first: int, n_classes: int) -> list[int]:
    """The clip's first class plus 0-2 distinct others."""
    n_extra = rng.choice(3, p=[0.35, 0.4, 0.25])
    others = rng.permutation([i for i in range(n_classes) if i != first])[:n_extra]
    return [first, *map(int, others)]
