"""ESC-50 as downloaded (github.com/karolpiczak/ESC-50): meta/esc50.csv + audio/<filename>.

esc50.csv columns: filename, fold, target, category, esc10, src_file, take. Single-label; class index =
`target`, label id = name = `category`. Every clip is split "train" with its official fold (1..5), so
cross-validation selects `fold==K` / `fold!=K`. clip_id = filename without extension; weight 1.0.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from cmkd_pipe.data_manifests.generic_csv import read_table
from cmkd_pipe.data_manifests.manifest import Manifest, ManifestError, Vocabulary

META = Path("meta") / "esc50.csv"
AUDIO = Path("audio")
COLUMNS = ["filename", "fold", "target", "category"]


def build_esc50(root: str | os.PathLike) -> Manifest:
    """Build the validated ESC-50 manifest from the dataset folder `root`."""
    root = Path(root)
    meta_path = root / META
    hint = "point root at the ESC-50 folder (the one holding meta/ and audio/)"
    table = read_table(meta_path, COLUMNS, hint)
    bad_numbers = sorted({v for c in ("fold", "target") for v in table[c] if not v.strip().isdigit()})
    if bad_numbers:
        raise ManifestError(f"{meta_path}: columns fold and target must be integers, found {bad_numbers[:5]}")
    table["target"] = table["target"].astype(int)
    vocabulary = _vocabulary(table, meta_path)
    clips = pd.DataFrame({
        "clip_id": [Path(f).stem for f in table["filename"]],
        "path": [(AUDIO / f).as_posix() for f in table["filename"]],
        "labels": [[c] for c in table["category"]],
        "split": "train",
        "fold": [int(f) for f in table["fold"]],
        "weight": 1.0,
    })
    return Manifest("esc50", clips, vocabulary, multilabel=False, root=root).validate()


def _vocabulary(table: pd.DataFrame, meta_path: Path) -> Vocabulary:
    """Class order from `target`; each target must name one category and each category one target."""
    pairs = table[["target", "category"]].drop_duplicates()
    problems = []
    for column, other in (("target", "category"), ("category", "target")):
        groups = pairs.groupby(column)[other].agg(lambda v: sorted(map(str, v)))
        problems += [f"{column} {key} goes with several {other} values {values}"
                     for key, values in groups.items() if len(values) > 1]
    targets = sorted(pairs["target"].unique())
    if targets != list(range(len(targets))):
        problems.append(f"targets must run 0..{len(targets) - 1} without gaps, found {targets}")
    if problems:
        raise ManifestError(f"{meta_path}: inconsistent classes: " + "; ".join(problems))
    categories = tuple(pairs.sort_values("target")["category"])
    return Vocabulary(categories, categories)
