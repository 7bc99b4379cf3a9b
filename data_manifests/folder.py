"""Folder-per-class corpus: root/<class>/<audio files> (sub-folders inside a class folder are included).

Single-label; vocabulary = sorted class folder names (id = name = folder name). Every clip is split
"train". Folds are stratified and deterministic: each class's files, sorted by path, are dealt
round-robin into folds 1..K, each class starting where the previous one stopped so the folds stay
the same size. clip_id = path relative to root without extension.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from cmkd_pipe.data_manifests.manifest import Manifest, ManifestError, Vocabulary

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")


def build_folder(root: str | os.PathLike, folds: int = 5) -> Manifest:
    """Build a validated manifest from class folders; `folds` = 0 leaves every clip without a fold (-1)."""
    root = Path(root)
    if not root.is_dir():
        raise ManifestError(f"{root}: not a folder; point root at the folder holding one sub-folder per class")
    if folds < 0:
        raise ManifestError(f"folds must be 0 (none) or a positive number of folds, got {folds}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = {name: _audio_files(root / name) for name in classes}
    empty = [name for name in classes if not files[name]]
    if not classes or empty:
        problem = f"class folder(s) without audio files: {empty}" if empty else "no class folders"
        raise ManifestError(f"{root}: {problem}; expected root/<class>/<file> with extensions {AUDIO_EXTENSIONS}")
    rows = []
    position = 0
    for name in classes:
        for path in files[name]:
            relative = path.relative_to(root)
            fold = position % folds + 1 if folds else -1
            rows.append({"clip_id": relative.with_suffix("").as_posix(), "path": relative.as_posix(),
                         "labels": [name], "fold": fold})
            position += 1
    clips = pd.DataFrame(rows).assign(split="train", weight=1.0)
    return Manifest(root.name, clips, Vocabulary(tuple(classes), tuple(classes)), False, root).validate()


def _audio_files(folder: Path) -> list[Path]:
    """Audio files anywhere under `folder`, hidden files and folders skipped, sorted by path."""
    found = []
    for directory, subdirs, names in os.walk(folder):
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        found += [Path(directory) / n for n in names
                  if not n.startswith(".") and Path(n).suffix.lower() in AUDIO_EXTENSIONS]
    return sorted(found)
