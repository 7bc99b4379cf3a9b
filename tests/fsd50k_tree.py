"""A tiny FSD50K tree in the published Zenodo layout, for the tests that run the FSD50K route.

16 multi-label clips (8 train, 4 val, 4 eval) over a small vocabulary (default: 4 classes with their
AudioSet mids); clip i holds class i mod K, odd clips also class (i + 1) mod K, so every split holds every
class; each class is one tone, a clip the sum of its classes' tones plus a little noise.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import soundfile as sf

VOCABULARY = [("Bark", "/m/05tny_"), ("Meow", "/m/07qrkrw"), ("Crash", "/m/0_ksk"), ("Drip", "/m/07pqc89")]
# the fsd50k preset shrunk for tests: one epoch, batch 4, EfficientNet-B0, a one-block AST with stride 16
TINY = ["train.epochs=1", "average.wa_start_epoch=null", "average.wa_end_epoch=null", "average.ensemble=false",
        "data.batch_size=4", "schedule.warmup_steps=1", "train.amp=false", "train.channels_last=false",
        "model.cnn.variant=efficientnet_b0", "model.cnn.pretrained=null", "model.ast.size=custom",
        "model.ast.embed_dim=16", "model.ast.depth=1", "model.ast.num_heads=2", "model.ast.fstride=16",
        "model.ast.tstride=16", "model.ast.pretrained=null"]
TONES = (300.0, 900.0, 2500.0, 6000.0, 4000.0, 1600.0)  # one tone per class


def clip_classes(i: int, n_classes: int = len(VOCABULARY)) -> list[int]:
    """Clip i holds class i mod K, odd clips also class (i + 1) mod K: every split holds every class."""
    return [i % n_classes] + ([(i + 1) % n_classes] if i % 2 else [])


def write_fsd50k(root: Path, vocabulary: list[tuple[str, str]] = VOCABULARY) -> None:
    """FSD50K.ground_truth/{vocabulary (no header), dev, eval}.csv and FSD50K.{dev,eval}_audio/<fname>.wav,
    labels and mids comma-joined (quoted) as Zenodo ships them; clips 0–7 train, 8–11 val, 12–15 eval."""
    truth = root / "FSD50K.ground_truth"
    truth.mkdir(parents=True)
    with open(truth / "vocabulary.csv", "w", newline="") as f:
        csv.writer(f).writerows((i, name, mid) for i, (name, mid) in enumerate(vocabulary))
    dev, evaluation = [("fname", "labels", "mids", "split")], [("fname", "labels", "mids")]
    t = np.arange(8000) / 16000
    for i in range(16):
        classes = clip_classes(i, len(vocabulary))
        wave = sum(0.3 * np.sin(2 * np.pi * TONES[c] * t) for c in classes)
        wave = wave + 0.02 * np.random.default_rng(i).standard_normal(len(t))
        fname = str(64000 + i)
        subset = "eval" if i >= 12 else "dev"
        (root / f"FSD50K.{subset}_audio").mkdir(exist_ok=True)
        sf.write(root / f"FSD50K.{subset}_audio" / f"{fname}.wav", wave.astype(np.float32), 16000, subtype="PCM_16")
        row = (fname, ",".join(vocabulary[c][0] for c in classes), ",".join(vocabulary[c][1] for c in classes))
        if subset == "dev":
            dev.append((*row, "val" if i >= 8 else "train"))
        else:
            evaluation.append(row)
    for name, rows in (("dev.csv", dev), ("eval.csv", evaluation)):
        with open(truth / name, "w", newline="") as f:
            csv.writer(f).writerows(rows)
