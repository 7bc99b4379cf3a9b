"""FSD50K as downloaded from Zenodo (record 4060432).

  FSD50K.ground_truth/vocabulary.csv  no header: index, label_name, mid
  FSD50K.ground_truth/dev.csv         fname, labels, mids, split (train / val); lists quoted, comma-joined
  FSD50K.ground_truth/eval.csv        fname, labels, mids
  FSD50K.dev_audio/<fname>.wav, FSD50K.eval_audio/<fname>.wav

200 classes, multi-label; label id = mid, name = label_name; class index = vocabulary index. Splits
train / val (from dev.csv) and eval. dev and eval number their clips independently, so
clip_id = "dev/<fname>" or "eval/<fname>". weight = AST/PSLA balanced weight, counts within each split.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from cmkd_pipe.data_manifests.audioset import balanced_weights_by_split
from cmkd_pipe.data_manifests.generic_csv import read_table
from cmkd_pipe.data_manifests.manifest import Manifest, ManifestError, Vocabulary, _short

GROUND_TRUTH = Path("FSD50K.ground_truth")
DEV_SPLITS = ("train", "val")


def build_fsd50k(root: str | os.PathLike) -> Manifest:
    """Build the validated FSD50K manifest from the folder `root` holding the unzipped FSD50K.* folders."""
    root = Path(root)
    hint = "point root at the folder holding FSD50K.ground_truth/, FSD50K.dev_audio/ and FSD50K.eval_audio/"
    vocabulary = _vocabulary(root / GROUND_TRUTH / "vocabulary.csv", hint)
    dev = read_table(root / GROUND_TRUTH / "dev.csv", ["fname", "mids", "split"], hint)
    evaluation = read_table(root / GROUND_TRUTH / "eval.csv", ["fname", "mids"], hint)
    bad_split = sorted(set(dev["split"]) - set(DEV_SPLITS))
    if bad_split:
        raise ManifestError(f"{root / GROUND_TRUTH / 'dev.csv'}: split must be one of {DEV_SPLITS}, found {bad_split}")
    clips = pd.concat([_clips(dev, "dev", dev["split"]), _clips(evaluation, "eval", "eval")], ignore_index=True)
    clips["weight"] = balanced_weights_by_split(list(clips["labels"]), list(clips["split"]))
    return Manifest("fsd50k", clips, vocabulary, multilabel=True, root=root).validate()


def _vocabulary(path: Path, hint: str) -> Vocabulary:
    table = read_table(path, ["index", "label_name", "mid"], hint, header=None, names=["index", "label_name", "mid"])
    bad = [v for v in table["index"] if not v.strip().isdigit()]
    if bad:
        raise ManifestError(f"{path}: first column must be the class index (the file has no header), "
                            f"found {_short(bad)}; {hint}")
    return Vocabulary.from_records([{"index": int(i), "id": m.strip(), "name": n.strip()}
                                    for i, n, m in zip(table["index"], table["label_name"], table["mid"])])


def _clips(table: pd.DataFrame, subset: str, split: pd.Series | str) -> pd.DataFrame:
    return pd.DataFrame({
        "clip_id": [f"{subset}/{f}" for f in table["fname"]],
        "path": [f"FSD50K.{subset}_audio/{f}.wav" for f in table["fname"]],
        "labels": [[m.strip() for m in mids.split(",") if m.strip()] for mids in table["mids"]],
        "split": split,
    })
