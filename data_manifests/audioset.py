"""AudioSet from the published segment lists plus a folder of downloaded clips.

Segment lists (`balanced_train_segments.csv`, `unbalanced_train_segments.csv`, `eval_segments.csv`):
'#' lines are comments, rows are `YTID, start_seconds, end_seconds, "mid1,mid2"` (a space after each
comma, the label list quoted). The split name is the file name without `_segments.csv`.
`class_labels_indices.csv` (index, mid, display_name) gives the vocabulary: id = mid, name = display name.

Audio is looked up by YouTube id anywhere under `audio_dir`, which is indexed once. Accepted names:
`<YTID>.<ext>`, `Y<YTID>.<ext>` (PANNs), `<YTID>_<start>.<ext>`, `<YTID>_<start>_<end>.<ext>` (times as
integers or decimals), ext in AUDIO_EXTENSIONS. clip_id = YTID (unique across the official lists).
weight = AST/PSLA balanced weight, label counts taken within each split.
"""
from __future__ import annotations

import csv
import logging
import os
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

from cmkd_pipe.data_manifests.folder import AUDIO_EXTENSIONS
from cmkd_pipe.data_manifests.generic_csv import read_table
from cmkd_pipe.data_manifests.manifest import Manifest, ManifestError, Vocabulary, _short, balanced_weights

log = logging.getLogger(__name__)

_TIME_SUFFIX = re.compile(r"(_\d+(?:\.\d+)?){1,2}$")
_NAMING = "<YTID>, Y<YTID>, <YTID>_<start> or <YTID>_<start>_<end> with extension " + "/".join(
    e[1:] for e in AUDIO_EXTENSIONS)


def build_audioset(segments_csvs: list[str | os.PathLike], class_labels_csv: str | os.PathLike,
                   audio_dir: str | os.PathLike, on_missing: str = "error") -> Manifest:
    """Build the validated AudioSet manifest (root = `audio_dir`).

    on_missing="error": one ManifestError lists the segments without audio (with every other problem);
    on_missing="drop": those segments are left out and a warning on this module's logger says how many.
    """
    if on_missing not in ("error", "drop"):
        raise ManifestError(f"on_missing must be 'error' or 'drop', got {on_missing!r}")
    if not segments_csvs:
        raise ManifestError("AudioSet: no segment csv given; pass e.g. balanced_train_segments.csv, eval_segments.csv")
    audio_dir = Path(audio_dir)
    if not audio_dir.is_dir():
        raise ManifestError(f"{audio_dir}: audio folder not found; point audio_dir at the downloaded AudioSet clips")
    vocabulary = read_class_labels(class_labels_csv)
    segments = pd.concat([read_segments(path) for path in segments_csvs], ignore_index=True)
    if segments.empty:
        raise ManifestError(f"AudioSet: no segment rows in {[str(p) for p in segments_csvs]}")
    index = index_audio(audio_dir)
    ytids = segments["clip_id"].tolist()
    found = [index.get(ytid, []) for ytid in ytids]

    problems = []
    ambiguous = [f"{ytid} ({', '.join(p.relative_to(audio_dir).as_posix() for p in paths)})"
                 for ytid, paths in zip(ytids, found) if len(paths) > 1]
    if ambiguous:
        problems.append(f"several audio files for one YouTube id (keep one): {_short(ambiguous)}")
    missing = [ytid for ytid, paths in zip(ytids, found) if not paths]
    if missing and on_missing == "error":
        problems.append(f"no audio under {audio_dir} for {len(missing)} of {len(segments)} segments: "
                        f"{_short(missing)} (accepted names: {_NAMING}; or pass on_missing='drop')")
    elif missing:
        log.warning("AudioSet: dropped %d of %d segments with no audio under %s (e.g. %s)",
                    len(missing), len(segments), audio_dir, _short(missing, 5))

    present = [bool(paths) for paths in found]
    if missing and on_missing == "drop" and not any(present):
        problems.append(f"no audio found under {audio_dir} for any of the {len(segments)} segments ({_NAMING})")
    clips = segments[present].assign(path=[paths[0].relative_to(audio_dir).as_posix() for paths in found if paths])
    clips["weight"] = balanced_weights_by_split(list(clips["labels"]), list(clips["split"]))
    manifest = Manifest("audioset", clips, vocabulary, multilabel=True, root=audio_dir)
    try:
        manifest.validate(check_files=False)  # every kept path came from the folder index
    except ManifestError as err:
        problems.insert(0, str(err))
    if problems:
        raise ManifestError("; ".join(problems))
    return manifest


def read_class_labels(path: str | os.PathLike) -> Vocabulary:
    """Vocabulary from an AST/AudioSet `class_labels_indices.csv` (index, mid, display_name)."""
    hint = "use AudioSet's class_labels_indices.csv (header index,mid,display_name)"
    table = read_table(path, ["index", "mid", "display_name"], hint)
    if not all(v.strip().isdigit() for v in table["index"]):
        raise ManifestError(f"{path}: column index must hold integers; {hint}")
    return Vocabulary.from_records([{"index": int(i), "id": m.strip(), "name": n.strip()}
                                    for i, m, n in zip(table["index"], table["mid"], table["display_name"])])


def read_segments(path: str | os.PathLike) -> pd.DataFrame:
    """Rows (clip_id=YTID, labels, split) of one published `*_segments.csv`."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: segment list not found; "
                            "download it from research.google.com/audioset/download.html")
    split = path.name.removesuffix(".csv").removesuffix("_segments")
    ytids, labels, bad, line_number = [], [], [], [0]

    def data_lines(f):
        for n, line in enumerate(f, 1):
            if line.strip() and not line.startswith("#"):
                line_number[0] = n
                yield line

    with path.open(newline="") as f:
        for fields in csv.reader(data_lines(f), skipinitialspace=True):
            if len(fields) != 4:
                bad.append(line_number[0])
                continue
            ytids.append(fields[0].strip())
            labels.append([l for l in fields[3].replace(" ", "").split(",") if l])
    if bad:
        raise ManifestError(f"{path}: line(s) {_short(bad)} are not `YTID, start, end, \"labels\"`; "
                            "is this an AudioSet segments csv?")
    return pd.DataFrame({"clip_id": ytids, "labels": labels, "split": split})


def index_audio(audio_dir: Path) -> dict[str, list[Path]]:
    """Map every YouTube id a file name can stand for to the audio files found (one walk of the folder)."""
    index: dict[str, list[Path]] = defaultdict(list)
    for directory, subdirs, names in os.walk(audio_dir):
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        for name in names:
            stem, ext = os.path.splitext(name)
            if ext.lower() not in AUDIO_EXTENSIONS or name.startswith("."):
                continue
            path = Path(directory) / name
            for key in _candidate_ids(stem):
                index[key].append(path)
    return index


def _candidate_ids(stem: str) -> set[str]:
    """The ids a stem may name: itself, without a PANNs 'Y' prefix, without _start[_end] time suffixes."""
    keys = {stem}
    untimed = _TIME_SUFFIX.sub("", stem)
    if untimed:
        keys.add(untimed)
    keys |= {k[1:] for k in keys if k.startswith("Y") and len(k) > 1}
    return keys


def balanced_weights_by_split(labels: list[list[str]], splits: list[str]) -> np.ndarray:
    """AST/PSLA balanced weights (manifest.balanced_weights) with label counts taken within each split."""
    weights = np.zeros(len(labels))
    by_split: dict[str, list[int]] = defaultdict(list)
    for i, split in enumerate(splits):
        by_split[split].append(i)
    for rows in by_split.values():
        weights[rows] = balanced_weights([labels[i] for i in rows])
    return weights

