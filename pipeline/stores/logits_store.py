"""The teacher-logits store: raw teacher logits for every clip and view of a feature store.

A teacher whose labels differ from the corpus's (an imported AudioSet teacher on FSD50K) scores only the
corpus classes its label map reaches: the store then holds those columns alone, and `class_map` (attr)
gives the corpus class index of each column, in corpus order; null means every class, in order.

The teacher's view parameters (the arrays of `pipeline.augment.ViewTable`) are stored beside the logits, per clip and view
(`view_bands`, `view_partner`, `view_lam`), so a student reads them instead of drawing them again; a store
written before them has none (`LogitsStore.has_view_params` is false) and its reader draws them."""
from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from cmkd_pipe.pipeline.label_map import vocabulary_hash
from cmkd_pipe.pipeline.stores.chunk_cache import ChunkCache
from cmkd_pipe.pipeline.stores.chunks import (StoreError, check_generation, chunk_range, create_store, mark_chunk_done,
                                    n_chunks, open_store, read_strings, require_complete, unreadable_chunk)
from cmkd_pipe.pipeline.stores.feature_store import FeatureStore, restore_columns, store_root
from cmkd_pipe.pipeline.stores.integrity import (chunk_problems, content_digest, describe, invalidate_damaged, record_chunk,
                                       require_intact)
from cmkd_pipe.pipeline.version import code_version

SCHEMA = "cmkd-pipe/logits/2"  # /2: chunk_digest, generation, content digests


def provenance(features: FeatureStore, teacher: dict[str, Any], views: dict[str, Any],
               class_map: list[int] | None = None) -> dict[str, Any]:
    """The attrs that identify what a logits store was computed from; equal attrs ⇒ resumable.
    `class_map`: the corpus class of each logit column (None: every class, in order)."""
    return {
        "schema": SCHEMA,
        "teacher": teacher,
        "vocabulary": features.vocabulary,
        "vocabulary_hash": vocabulary_hash(features.vocabulary),
        "feature_fingerprint": features.fingerprint,
        "feature_content_digest": features.content_digest,
        "feature_store": str(features.path.resolve()),
        "multilabel": features.multilabel,
        "views": views,
        "n_clips": len(features),
        "class_map": None if class_map is None else [int(c) for c in class_map],
    }


def create_logits_store(path: str | os.PathLike, features: FeatureStore, teacher: dict[str, Any],
                        views: dict[str, Any], chunk_clips: int, class_map: list[int] | None = None) -> zarr.Group:
    """Lay out an empty logits store [clips, views, classes] aligned with the feature store's rows (classes:
    the mapped ones when `class_map` is given)."""
    n, v = len(features), int(views["n_views"])
    k = features.n_classes if class_map is None else len(class_map)

    def build(group: zarr.Group) -> None:
        group.create_array("logits", shape=(n, v, k), chunks=(chunk_clips, v, k), dtype="float32", fill_value=0)
        group.create_array("view_bands", shape=(n, v, 5), chunks=(chunk_clips, v, 5), dtype="int32", fill_value=0)
        group.create_array("view_partner", shape=(n, v), chunks=(chunk_clips, v), dtype="int64", fill_value=-1)
        group.create_array("view_lam", shape=(n, v), chunks=(chunk_clips, v), dtype="float64", fill_value=1.0)
        group.create_array("clip_id", shape=(n,), chunks=(chunk_clips,), dtype=str)[:] = features.clip_ids

    attrs = {**provenance(features, teacher, views, class_map), "chunk_clips": chunk_clips,
             "code_version": code_version(),
             "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    return create_store(path, build, attrs, n_chunks(n, chunk_clips))


def open_for_writing(path: str | os.PathLike, expected: dict[str, Any], features: FeatureStore) -> zarr.Group:
    """Reopen a store to resume it; refuse one computed from another teacher, feature store or views.
    Done chunks whose files are missing or altered are marked not done, so the run redoes exactly them."""
    group = open_store(path, SCHEMA, mode="r+")
    differ = [key for key, value in expected.items() if key != "feature_store" and group.attrs.get(key) != value]
    if differ:
        raise StoreError(f"{path}: was computed with other {', '.join(differ)}; "
                         "pass --overwrite to recompute it or choose another --out")
    restore_columns(group, invalidate_damaged(group, path), {"clip_id": features.clip_ids})
    return group


ViewArrays = tuple[np.ndarray, np.ndarray, np.ndarray]  # bands [..., 5] int32, partner row [...] int64, λ [...] float64


def write_chunk(group: zarr.Group, index: int, logits: np.ndarray, generation: str, views: ViewArrays) -> None:
    """Write one chunk's logits [clips, V, K] and view parameters (`views`: clips × V entries, clip-major; a
    store created before they were kept gets the logits alone), its file record, then its done marker (last)."""
    root = store_root(group)
    check_generation(group, root, generation)
    start, stop = chunk_range(index, group.attrs["chunk_clips"], group.attrs["n_clips"])
    group["logits"][start:stop] = logits.astype(np.float32)
    if "view_lam" in group:
        shape = logits.shape[:2]
        bands, partner, lam = views
        group["view_bands"][start:stop] = np.asarray(bands, dtype=np.int32).reshape(*shape, 5)
        group["view_partner"][start:stop] = np.asarray(partner, dtype=np.int64).reshape(shape)
        group["view_lam"][start:stop] = np.asarray(lam, dtype=np.float64).reshape(shape)
    check_generation(group, root, generation)
    record_chunk(group, root, index)
    mark_chunk_done(group, index)


def finalize(group: zarr.Group) -> None:
    group.attrs.update({"complete": True, "content_digest": content_digest(group)})


class LogitsStore:
    """Read side of a complete logits store."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.group = open_store(self.path, SCHEMA, mode="r")
        require_complete(self.group, self.path)
        require_intact(self.group, self.path, "teacher-logits")
        self.attrs = self.group.attrs.asdict()
        self.logits = self.group["logits"]
        self.chunk_clips = int(self.attrs["chunk_clips"])
        self.n_views = int(self.attrs["views"]["n_views"])
        self.clip_ids = read_strings(self.group["clip_id"])
        mapped = self.attrs.get("class_map")
        self.class_map = None if mapped is None else np.asarray(mapped, dtype=np.int64)
        self.has_view_params = "view_lam" in self.group  # false for stores written before they were kept
        self._views: tuple[ChunkCache, ChunkCache, ChunkCache] | None = None

    def view_params(self, rows: np.ndarray, views: np.ndarray) -> ViewArrays:
        """The stored parameters of view views[i] of row rows[i] (bands [n, 5], partner rows [n], λ [n]; whole
        chunks decoded once and kept)."""
        if not self.has_view_params:
            raise StoreError(f"{self.path}: written before view parameters were stored; draw them "
                             "(pipeline.views.ViewBuilder without `stored`)")
        if self._views is None:
            self._views = tuple(ChunkCache.resident(self.group[name], self.chunk_clips)  # type: ignore[assignment]
                                for name in ("view_bands", "view_partner", "view_lam"))
        bands, partner, lam = self._views
        rows, views = np.asarray(rows, dtype=np.int64), np.asarray(views, dtype=np.int64)
        if len(views) and (views.min() < 0 or views.max() >= self.n_views):
            raise ValueError(f"{self.path}: views must be in 0..{self.n_views - 1}")
        pick = np.arange(len(rows))
        return bands.rows(rows)[pick, views], partner.rows(rows)[pick, views], lam.rows(rows)[pick, views]

    @property
    def n_columns(self) -> int:
        """Logit columns per view: the corpus's classes, or the mapped ones."""
        return int(self.logits.shape[2])

    def check_matches(self, features: FeatureStore, vocabulary: list[dict] | None = None) -> None:
        """Refuse, saying what differs, a store not computed from these features / for this vocabulary."""
        problems = []
        if self.attrs["feature_fingerprint"] != features.fingerprint:
            problems.append(f"feature store differs (fingerprint {self.attrs['feature_fingerprint']} != "
                            f"{features.fingerprint}: other manifest or feature settings)")
        if len(self.clip_ids) != len(features) or not np.array_equal(self.clip_ids, features.clip_ids):
            mismatch = _first_mismatch(self.clip_ids, features.clip_ids)
            problems.append(f"clip ids differ ({len(self.clip_ids)} vs {len(features)} clips; {mismatch})")
        wanted = features.vocabulary if vocabulary is None else vocabulary
        if self.attrs["vocabulary_hash"] != vocabulary_hash(wanted):
            problems.append(_vocabulary_difference(self.attrs["vocabulary"], wanted))
        problems += self._class_map_problems(features.n_classes)
        if not problems and self.attrs.get("feature_content_digest") != features.content_digest:
            problems.append(f"computed from other feature data (feature store content digest "  # same ids, labels
                            f"{str(self.attrs.get('feature_content_digest'))[:16]} recorded by this logits store, "
                            f"{features.content_digest[:16]} in {features.path}: another corpus or a rebuilt store)")
        if problems:
            raise StoreError(f"{self.path}: logits store does not match: " + "; ".join(problems) +
                             ". Recompute it with `cmkd-pipe teacher-logits` for these features")

    def _class_map_problems(self, n_classes: int) -> list[str]:
        """The columns must be every class, or a class map of distinct corpus classes in order, one per column."""
        if self.class_map is None:
            return [] if self.n_columns == n_classes else [
                f"{self.n_columns} logit columns for {n_classes} classes and no class_map"]
        cmap = self.class_map
        if len(cmap) != self.n_columns or not len(cmap) or cmap[0] < 0 or cmap[-1] >= n_classes \
                or (np.diff(cmap) <= 0).any():
            return [f"class_map is not {self.n_columns} increasing class indices below {n_classes}"]
        return []

    def verify_readable(self) -> None:
        """Check every chunk file's sha256 against its record and decode every chunk once: a missing,
        truncated, altered or undecodable chunk, or non-finite logits, is named in the error."""
        problems = describe(self.group, self.path, chunk_problems(self.group, self.path, deep=True))
        if problems:
            raise StoreError(f"{problems[0]}; rerun `cmkd-pipe teacher-logits` with the same arguments: "
                             "damaged chunks are redone")
        for index in range(int(self.attrs["n_chunks"])):
            start, stop = chunk_range(index, self.chunk_clips, len(self.clip_ids))
            try:
                block = np.asarray(self.logits[start:stop])
            except Exception as error:
                raise StoreError(unreadable_chunk(self.path, "logits", [index], self.chunk_clips,
                                                  len(self.clip_ids), error)) from None
            if not np.isfinite(block).all():
                raise StoreError(f"{self.path}: chunk {index} holds non-finite logits; rerun teacher-logits "
                                 "with --overwrite")


def _first_mismatch(a: np.ndarray, b: np.ndarray) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"first difference at row {i}: {str(x)!r} vs {str(y)!r}"
    return "one is a prefix of the other"


def _vocabulary_difference(have: list[dict], want: list[dict]) -> str:
    if len(have) != len(want):
        return f"label vocabulary differs ({len(have)} vs {len(want)} classes)"
    for a, b in zip(have, want):
        if (a["id"], a["name"]) != (b["id"], b["name"]):
            return f"label vocabulary differs at index {a['index']}: {a['id']!r} vs {b['id']!r}"
    return "label vocabulary differs"
