"""Read and write the AST/PSLA datafile format, so users of that ecosystem bring their own lists.

A datafile is `{"data": [{"wav": "/abs/x.wav", "labels": "/m/09x0r,/m/05zppz"}, ...]}`: labels are
comma-joined label ids (mids) of `class_labels_indices.csv` (index, mid, display_name). Other keys are
ignored, except "clip_id", which `write_ast_json` adds so a round trip keeps the ids. One datafile per
split. Relative "wav" paths are taken relative to the datafile's folder. Folds are not part of the format.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pandas as pd

from cmkd_pipe.data_manifests.audioset import balanced_weights_by_split, read_class_labels
from cmkd_pipe.data_manifests.manifest import Manifest, ManifestError, _short

LABELS_FILE = "class_labels_indices.csv"


def read_ast_json(json_paths: dict[str, str | os.PathLike], class_labels_csv: str | os.PathLike,
                  multilabel: bool | None = None) -> Manifest:
    """Build a validated manifest from {split: datafile}; multi-label unless told (default: any clip has >1 label).

    root = the deepest folder holding every clip; weight = balanced weight within each split when
    multi-label, 1.0 otherwise; clip_id = the entry's "clip_id", else the path under root without extension.
    """
    if not json_paths:
        raise ManifestError("AST JSON: no datafile given; pass {split: path/to/datafile.json}")
    vocabulary = read_class_labels(class_labels_csv)
    rows = [row for split, path in json_paths.items() for row in _read_datafile(Path(path), split)]
    if not rows:
        raise ManifestError(f"AST JSON: the datafiles {[str(p) for p in json_paths.values()]} hold no clips")
    root = Path(os.path.commonpath([os.path.dirname(r["wav"]) for r in rows]))
    for row in rows:
        row["path"] = Path(row.pop("wav")).relative_to(root).as_posix()
        row.setdefault("clip_id", str(Path(row["path"]).with_suffix("")))
    clips = pd.DataFrame(rows)
    if multilabel is None:
        multilabel = bool((clips["labels"].map(len) > 1).any())
    if multilabel:
        clips["weight"] = balanced_weights_by_split(list(clips["labels"]), list(clips["split"]))
    return Manifest("ast-json", clips, vocabulary, multilabel, root).validate()


def write_ast_json(manifest: Manifest, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write `<split>.json` per split (absolute wav paths) and class_labels_indices.csv; return {split: path}."""
    with_comma = [label for label in manifest.vocabulary.ids if "," in label]
    if with_comma:
        raise ManifestError(f"manifest {manifest.name}: label ids with a comma cannot go into AST datafiles "
                            f"(labels are comma-joined there): {_short(with_comma)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for split in manifest.clips["split"].unique():
        entries = [{"wav": os.path.abspath(manifest.audio_path(i)),
                    "labels": ",".join(manifest.clips.at[i, "labels"]),
                    "clip_id": manifest.clips.at[i, "clip_id"]}
                   for i in manifest.clips.index[manifest.clips["split"] == split]]
        written[split] = out_dir / f"{split}.json"
        written[split].write_text(json.dumps({"data": entries}, indent=1))
    with (out_dir / LABELS_FILE).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "mid", "display_name"])
        writer.writerows((r["index"], r["id"], r["name"]) for r in manifest.vocabulary.to_records())
    return written


def _read_datafile(path: Path, split: str) -> list[dict]:
    """Entries of one datafile as {wav (absolute), labels, split[, clip_id]}; every bad entry reported at once."""
    if not path.is_file():
        raise ManifestError(f"{path}: AST datafile not found")
    try:
        data = json.loads(path.read_text())["data"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ManifestError(f"{path}: not an AST datafile ({err!r}); "
                            'expected {"data": [{"wav": ..., "labels": ...}]}') from err
    bad = [n for n, e in enumerate(data) if not (isinstance(e, dict) and isinstance(e.get("wav"), str)
                                                  and isinstance(e.get("labels"), str))]
    if bad:
        raise ManifestError(f"{path}: entries {_short(bad)} lack a string \"wav\" or \"labels\"")
    rows = []
    for entry in data:
        row = {"wav": os.path.abspath(path.parent / entry["wav"]), "split": split,
               "labels": [l.strip() for l in entry["labels"].split(",") if l.strip()]}
        if "clip_id" in entry:
            row["clip_id"] = str(entry["clip_id"])
        rows.append(row)
    return rows
