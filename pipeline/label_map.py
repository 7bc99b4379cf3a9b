"""A teacher's label set mapped onto a corpus vocabulary (an AudioSet-527 teacher on FSD50K-200).

Teacher labels are records {index, id, name} like a corpus vocabulary's. They come from a Hugging Face
config (`id2label`, else `label2id`: values that are AudioSet ontology ids (mids, `/m/…`, `/g/…`, `/t/…`)
become ids, other values are display names) or from a labels CSV in AudioSet's
`class_labels_indices.csv` layout (header `index,mid,display_name`).

Classes are matched by mid when the teacher's labels carry mids (FSD50K's and AudioSet's vocabularies
use mids as ids), else by display name, compared after folding case, "_" and ", " (FSD50K writes AudioSet's
"Accelerating, revving, vroom" as "Accelerating_and_revving_and_vroom"). A `LabelMap` lists, in corpus
order, each mapped corpus class and the teacher logit column that scores it; the corpus classes left out
are `unmapped`.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MID = re.compile(r"^/[mgt]/[0-9a-z_]+$")
SHOWN = 10  # unmapped classes named in a message


def is_mid(label: str) -> bool:
    """True for an AudioSet ontology id such as /m/05tny_ or /t/dd00001."""
    return bool(MID.match(label.strip()))


def labels_from_hf_config(config: dict[str, Any], where: str) -> list[dict] | None:
    """Teacher label records from a Hugging Face config's id2label (or label2id); None when it has neither."""
    id2label = config.get("id2label")
    if not id2label and config.get("label2id"):
        id2label = {str(index): label for label, index in config["label2id"].items()}
    if not id2label:
        return None
    try:
        pairs = sorted((int(index), str(label)) for index, label in id2label.items())
    except (TypeError, ValueError):
        raise ValueError(f"{where}: id2label keys must be class indices 0..N-1") from None
    if [index for index, _ in pairs] != list(range(len(pairs))):
        raise ValueError(f"{where}: id2label must number its {len(pairs)} labels 0..{len(pairs) - 1} without gaps")
    return [{"index": index, "id": label, "name": label} for index, label in pairs]


def read_labels_csv(path: str | Path) -> list[dict]:
    """Teacher label records from a CSV with header index,mid,display_name (AudioSet's class_labels_indices.csv)."""
    path = Path(path)
    hint = "give AudioSet's class_labels_indices.csv layout: header index,mid,display_name"
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as error:
        raise ValueError(f"--labels {path}: cannot read ({error.strerror or error})") from None
    if not rows or not {"index", "mid", "display_name"} <= set(rows[0]):
        raise ValueError(f"--labels {path}: expected columns index, mid, display_name; {hint}")
    records = []
    for line, row in enumerate(rows, start=2):
        if not str(row["index"]).strip().isdigit() or not str(row["mid"]).strip():
            raise ValueError(f"--labels {path}: line {line}: index must be a class number and mid non-empty; {hint}")
        records.append({"index": int(row["index"]), "id": row["mid"].strip(), "name": row["display_name"].strip()})
    records.sort(key=lambda record: record["index"])
    if [record["index"] for record in records] != list(range(len(records))):
        raise ValueError(f"--labels {path}: indices must run 0..{len(records) - 1} without gaps or repeats")
    return records


def name_key(name: str) -> str:
    """A display name folded for matching: case, '_' and ', ' (FSD50K's '_and_') do not count."""
    text = name.replace(", ", " and ").replace("_", " ").casefold()
    return " ".join(text.split())


@dataclass(frozen=True)
class LabelMap:
    """Corpus class `corpus_classes[j]` is scored by teacher logit column `teacher_columns[j]` (corpus order)."""

    teacher_columns: tuple[int, ...]
    corpus_classes: tuple[int, ...]
    unmapped: tuple[int, ...]  # corpus classes the teacher has no label for
    by: str  # "mid" | "name"
    n_teacher: int  # the teacher's output count
    corpus_vocabulary_hash: str

    def to_dict(self) -> dict[str, Any]:
        return {"teacher_columns": list(self.teacher_columns), "corpus_classes": list(self.corpus_classes),
                "unmapped": list(self.unmapped), "by": self.by, "n_teacher": self.n_teacher,
                "corpus_vocabulary_hash": self.corpus_vocabulary_hash}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LabelMap":
        return cls(tuple(int(c) for c in data["teacher_columns"]), tuple(int(c) for c in data["corpus_classes"]),
                   tuple(int(c) for c in data["unmapped"]), str(data["by"]), int(data["n_teacher"]),
                   str(data["corpus_vocabulary_hash"]))

    def describe_unmapped(self, corpus: list[dict]) -> str:
        """'N corpus classes have no teacher label: id (name), … (+M more)'."""
        named = [f"{corpus[c]['id']} ({corpus[c]['name']})" for c in self.unmapped[:SHOWN]]
        more = f" (+{len(self.unmapped) - SHOWN} more)" if len(self.unmapped) > SHOWN else ""
        return f"{len(self.unmapped)} of {len(corpus)} corpus classes have no teacher label: {', '.join(named)}{more}"


def vocabulary_hash(vocabulary: list[dict]) -> str:
    """The hash a corpus vocabulary is known by (data_manifests.manifest.Vocabulary.hash)."""
    from cmkd_pipe.data_manifests.manifest import Vocabulary

    return Vocabulary.from_records(vocabulary).hash()


def same_labels(a: list[dict], b: list[dict]) -> bool:
    """Equal ids and names in the same order."""
    return len(a) == len(b) and all((str(x["id"]), str(x["name"])) == (str(y["id"]), str(y["name"]))
                                    for x, y in zip(a, b))


def map_labels(teacher: list[dict], corpus: list[dict]) -> LabelMap:
    """Match every corpus class to a teacher label, by mid when the teacher's ids are mids, else by name."""
    by = "mid" if teacher and all(is_mid(str(t["id"])) for t in teacher) else "name"
    if by == "mid":
        keys = [str(t["id"]).strip() for t in teacher]
        wanted = [str(c["id"]).strip() for c in corpus]
    else:
        keys = [name_key(str(t["name"])) for t in teacher]
        wanted = [name_key(str(c["name"])) for c in corpus]
    columns: dict[str, list[int]] = {}
    for column, key in enumerate(keys):
        columns.setdefault(key, []).append(column)
    mapped, unmapped = [], []
    for index, key in enumerate(wanted):
        found = columns.get(key, [])
        (mapped if len(found) == 1 else unmapped).append((index, found[0] if len(found) == 1 else -1))
    return LabelMap(tuple(column for _, column in mapped), tuple(index for index, _ in mapped),
                    tuple(index for index, _ in unmapped), by, len(teacher), vocabulary_hash(corpus))
