"""The one manifest format every corpus is turned into, with validation and on-disk form.

On disk a manifest is a folder:
  clips.csv       clip_id, path, labels (label ids joined by ';'), split, fold (-1: none), weight
  vocabulary.csv  index, id, name
  manifest.json   name, multilabel, root, hash
Paths in clips.csv are relative to `root` (absolute paths are kept as they are).
"""
from __future__ import annotations

import hashlib
import json
import os
import uuid
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

CLIP_COLUMNS = ["clip_id", "path", "labels", "split", "fold", "weight"]
LABEL_SEPARATOR = ";"


class ManifestError(ValueError):
    """A manifest failed validation; the message lists every offender."""


@dataclass(frozen=True)
class Vocabulary:
    """Ordered label vocabulary: position = class index."""

    ids: tuple[str, ...]
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.names):
            raise ManifestError("vocabulary: ids and names differ in length")

    def __len__(self) -> int:
        return len(self.ids)

    def index(self) -> dict[str, int]:
        return {label: i for i, label in enumerate(self.ids)}

    def to_records(self) -> list[dict]:
        return [{"index": i, "id": a, "name": b} for i, (a, b) in enumerate(zip(self.ids, self.names))]

    @classmethod
    def from_records(cls, records: list[dict]) -> "Vocabulary":
        records = sorted(records, key=lambda r: int(r["index"]))
        return cls(tuple(str(r["id"]) for r in records), tuple(str(r["name"]) for r in records))

    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_records()).encode()).hexdigest()[:16]


@dataclass
class Manifest:
    """A corpus: one row per clip (see CLIP_COLUMNS) plus its label vocabulary."""

    name: str
    clips: pd.DataFrame  # `labels` holds a list[str] of label ids per row
    vocabulary: Vocabulary
    multilabel: bool
    root: Path

    def __post_init__(self) -> None:
        clips = self.clips.copy()
        if "fold" not in clips:
            clips["fold"] = -1
        if "weight" not in clips:
            clips["weight"] = 1.0
        if "split" not in clips:
            clips["split"] = "train"
        missing = [c for c in CLIP_COLUMNS if c not in clips]
        if missing:
            raise ManifestError(f"manifest {self.name}: missing column(s) {missing}")
        clips["labels"] = [list(v) for v in clips["labels"]]
        clips["fold"] = clips["fold"].astype(int)
        clips["weight"] = clips["weight"].astype(float)
        clips["clip_id"] = clips["clip_id"].astype(str)
        clips["path"] = clips["path"].astype(str)
        clips["split"] = clips["split"].astype(str)
        self.clips = clips[CLIP_COLUMNS].reset_index(drop=True)
        self.root = Path(self.root)

    def __len__(self) -> int:
        return len(self.clips)

    def audio_path(self, i: int) -> Path:
        path = Path(self.clips.at[i, "path"])
        return path if path.is_absolute() else self.root / path

    def targets(self) -> np.ndarray:
        """Multi-hot uint8 matrix [clips, classes]."""
        index = self.vocabulary.index()
        out = np.zeros((len(self.clips), len(self.vocabulary)), dtype=np.uint8)
        for row, labels in enumerate(self.clips["labels"]):
            for label in labels:
                out[row, index[label]] = 1
        return out

    def in_store_order(self, seed: int = 0) -> "Manifest":
        """The same clips in a seeded random order (the row order of a feature store).

        Training reads a store chunk-locally (pipeline.training.sampler), so a store laid out in the
        manifest's order would give batches of one or two classes wherever the manifest lists clips by
        class (folder corpora, the demo). A fixed permutation makes every chunk a random sample."""
        order = np.random.default_rng(seed).permutation(len(self.clips))
        return dataclasses.replace(self, clips=self.clips.iloc[order])

    def validate(self, check_files: bool = True) -> "Manifest":
        """Raise ManifestError naming every offender at once; return self when valid."""
        problems: list[str] = []
        duplicated = self.clips["clip_id"][self.clips["clip_id"].duplicated()].unique()
        if len(duplicated):
            problems.append(f"duplicate clip ids: {_short(duplicated)}")
        known = set(self.vocabulary.ids)
        if len(known) != len(self.vocabulary.ids):
            problems.append("vocabulary has duplicate label ids")
        unknown = sorted({l for labels in self.clips["labels"] for l in labels if l not in known})
        if unknown:
            problems.append(f"labels not in the vocabulary: {_short(unknown)}")
        empty = self.clips["clip_id"][self.clips["labels"].map(len) == 0].tolist()
        if empty:
            problems.append(f"clips with no label: {_short(empty)}")
        if not self.multilabel:
            multi = self.clips["clip_id"][self.clips["labels"].map(len) > 1].tolist()
            if multi:
                problems.append(f"single-label manifest has clips with several labels: {_short(multi)}")
        if check_files:  # an entry that is there but unusable (broken link, folder) is a bad clip later
            absent = [self.clips.at[i, "clip_id"] for i in range(len(self)) if not os.path.lexists(self.audio_path(i))]
            if absent:
                problems.append(f"audio files missing under {self.root}: {_short(absent)}")
        if problems:
            raise ManifestError(f"manifest {self.name}: " + "; ".join(problems))
        return self

    def hash(self) -> str:
        """Content hash of clips + vocabulary (not of the audio bytes)."""
        table = self.clips.assign(labels=self.clips["labels"].map(LABEL_SEPARATOR.join))
        blob = table.to_csv(index=False) + json.dumps(self.vocabulary.to_records()) + str(self.multilabel)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the manifest folder atomically (temp folder + rename). Only an existing manifest folder
        or an empty folder is replaced; a file or another folder at `folder` is refused."""
        folder = Path(folder)
        _check_replaceable(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.mkdir()  # respects the umask (tempfile.mkdtemp would make it 0700)
        table = self.clips.assign(labels=self.clips["labels"].map(LABEL_SEPARATOR.join))
        table.to_csv(tmp / "clips.csv", index=False)
        pd.DataFrame(self.vocabulary.to_records()).to_csv(tmp / "vocabulary.csv", index=False)
        meta = {"name": self.name, "multilabel": self.multilabel, "root": str(self.root.resolve()), "hash": self.hash()}
        (tmp / "manifest.json").write_text(json.dumps(meta, indent=2))
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            os.replace(folder, old)
            os.replace(tmp, folder)
            _rmtree(old)
        else:
            os.replace(tmp, folder)
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike, check_files: bool = True) -> "Manifest":
        """Read and validate a manifest folder written by `save`."""
        folder = Path(folder)
        meta_path = folder / "manifest.json"
        if not meta_path.is_file():
            raise ManifestError(f"{folder}: not a manifest folder (no manifest.json); build one with `cmkd-pipe manifest`")
        try:
            meta = json.loads(meta_path.read_text())
            name, multilabel, root = meta["name"], bool(meta["multilabel"]), Path(meta["root"])
        except (ValueError, KeyError, TypeError) as error:
            raise ManifestError(f"{meta_path}: not a valid manifest.json ({_first_line(error)}); rebuild the "
                                "manifest with `cmkd-pipe manifest`") from None
        clips = _read_table(folder / "clips.csv", {"clip_id": str, "path": str, "labels": str, "split": str},
                            ["clip_id", "path", "labels"])
        clips["labels"] = clips["labels"].map(lambda s: [l for l in s.split(LABEL_SEPARATOR) if l])
        vocab = Vocabulary.from_records(_read_table(folder / "vocabulary.csv", {"id": str, "name": str},
                                                    ["index", "id", "name"]).to_dict("records"))
        manifest = cls(name, clips, vocab, multilabel, root)
        return manifest.validate(check_files=check_files)


def balanced_weights(labels: list[list[str]], offset: float = 0.01) -> np.ndarray:
    """AST/PSLA balanced-sampling weight: sum over a clip's labels of 1000 / (label count + offset)."""
    counts: dict[str, int] = {}
    for clip_labels in labels:
        for label in clip_labels:
            counts[label] = counts.get(label, 0) + 1
    return np.array([sum(1000.0 / (counts[l] + offset) for l in clip_labels) for clip_labels in labels])


def _short(items, limit: int = 10) -> str:
    items = list(items)
    text = ", ".join(map(str, items[:limit]))
    return text + (f" … (+{len(items) - limit} more)" if len(items) > limit else "")


def _read_table(path: Path, dtype: dict, required: list[str]) -> pd.DataFrame:
    """A manifest csv, or one ManifestError naming the file."""
    if not path.is_file():
        raise ManifestError(f"{path}: missing from the manifest folder; rebuild the manifest with `cmkd-pipe manifest`")
    try:
        table = pd.read_csv(path, dtype=dtype, keep_default_na=False)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise ManifestError(f"{path}: unreadable ({_first_line(error)}); rebuild the manifest") from None
    missing = [c for c in required if c not in table]
    if missing:
        raise ManifestError(f"{path}: missing column(s) {missing}; rebuild the manifest")
    return table


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:160]


def _check_replaceable(folder: Path) -> None:
    """Refuse an output path that holds something other than a manifest folder or nothing."""
    if not folder.exists() and not folder.is_symlink():
        return
    if not folder.is_dir():
        raise ManifestError(f"{folder}: exists and is not a folder; choose another --out for the manifest "
                            "(nothing was changed)")
    if any(folder.iterdir()) and not (folder / "manifest.json").is_file():
        raise ManifestError(f"{folder}: exists and is not a manifest folder (no manifest.json); choose another "
                            "--out (only a manifest folder is replaced; nothing was changed)")


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
