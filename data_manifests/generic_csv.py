"""Manifest from a user CSV (path, label[, split, fold]), plus the checked CSV reader the builders share.

The CSV has one row per clip:
  path   audio file, relative to `root` (default: the CSV's folder) or absolute
  label  label(s) of the clip, several joined by ';' (any row with several makes the manifest multi-label)
  split  optional, default "train"
  fold   optional integer, default -1 (none)
The vocabulary is the sorted set of labels; ids and names are the label strings. clip_id is the path
without its extension.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from cmkd_pipe.data_manifests.manifest import LABEL_SEPARATOR, Manifest, ManifestError, Vocabulary


def read_table(path: str | os.PathLike, columns: list[str], hint: str, **read_csv_options) -> pd.DataFrame:
    """Read a CSV as strings, raising ManifestError naming the file, the missing column(s) and `hint`."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: file not found; {hint}")
    options = {"dtype": str, "keep_default_na": False, **read_csv_options}
    try:
        table = pd.read_csv(path, **options)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ManifestError(f"{path}: not a readable CSV ({err}); {hint}") from err
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ManifestError(f"{path}: missing column(s) {missing} (found {list(table.columns)}); {hint}")
    return table


def build_generic_csv(csv_path: str | os.PathLike, root: str | os.PathLike | None = None) -> Manifest:
    """Read a path,label[,split,fold] CSV into a validated manifest."""
    csv_path = Path(csv_path)
    hint = "a labelled CSV needs columns path,label (labels joined by ';') and optional split,fold"
    table = read_table(csv_path, ["path", "label"], hint)
    problems = []
    for column in ("path", "split"):
        if column in table:
            blank = [i + 2 for i, v in enumerate(table[column]) if not v.strip()]
            if blank:
                problems.append(f"empty {column} on line(s) {blank[:10]}")
    if "fold" in table:
        bad = sorted({f for f in table["fold"] if not f.strip().lstrip("-").isdigit()})
        if bad:
            problems.append(f"column fold must hold integers (-1: none), found {bad[:5]}")
    if problems:
        raise ManifestError(f"{csv_path}: " + "; ".join(problems) + f"; {hint}")
    labels = [[l.strip() for l in cell.split(LABEL_SEPARATOR) if l.strip()] for cell in table["label"]]
    clips = pd.DataFrame({
        "clip_id": [str(Path(p).with_suffix("")) for p in table["path"]],
        "path": table["path"],
        "labels": labels,
        "split": table["split"].str.strip() if "split" in table else "train",
        "fold": [int(f) for f in table["fold"]] if "fold" in table else -1,
    })
    vocabulary = sorted({l for clip_labels in labels for l in clip_labels})
    manifest = Manifest(
        name=csv_path.stem,
        clips=clips,
        vocabulary=Vocabulary(tuple(vocabulary), tuple(vocabulary)),
        multilabel=any(len(l) > 1 for l in labels),
        root=Path(root) if root is not None else csv_path.parent,
    )
    return manifest.validate()

