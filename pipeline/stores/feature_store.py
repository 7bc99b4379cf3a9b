"""The feature store: Kaldi fbank of every clip of a manifest in one chunked Zarr v3 group."""
from __future__ import annotations

import datetime as dt
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import zarr

from cmkd_pipe.data_manifests.manifest import Manifest
from cmkd_pipe.pipeline.config import FeatureConfig, Normalization, fingerprint
from cmkd_pipe.pipeline.stores.chunks import (StoreError, check_generation, chunk_range, create_store, mark_chunk_done,
                                    n_chunks, open_store, pending_chunks, read_strings, require_complete,
                                    unreadable_chunk)
from cmkd_pipe.pipeline.stores.codecs import DEFAULT_CODEC, ZARR_DEFAULT, compressors
from cmkd_pipe.pipeline.stores.integrity import content_digest, invalidate_damaged, record_chunk, require_intact
from cmkd_pipe.pipeline.version import code_version

SCHEMA = "cmkd-pipe/features/2"  # /2: chunk_digest, generation, content_digest


def feature_fingerprint(manifest_hash: str, feature_config: FeatureConfig) -> str:
    """What a logits store records to prove which features it was computed from."""
    return fingerprint({"manifest": manifest_hash, "features": feature_config.to_dict()})


def create_feature_store(path: str | os.PathLike, manifest: Manifest, config: FeatureConfig,
                         chunk_clips: int, audio_checks: dict | None = None,
                         codec: str = DEFAULT_CODEC) -> zarr.Group:
    """Lay out an empty store for `manifest` (metadata, labels, splits); fbank chunks come later, compressed
    with `codec` (pipeline.stores.codecs; recorded in the attributes and in the array's own metadata)."""
    n, t, f = len(manifest), config.target_frames, config.num_mel_bins
    fbank_compressors = compressors(codec)

    def build(group: zarr.Group) -> None:
        group.create_array("fbank", shape=(n, t, f), chunks=(chunk_clips, t, f), dtype="float16", fill_value=0,
                           compressors=fbank_compressors)
        group.create_array("valid_frames", shape=(n,), chunks=(chunk_clips,), dtype="int32", fill_value=0)
        group.create_array("ok", shape=(n,), chunks=(chunk_clips,), dtype=bool, fill_value=False)
        group.create_array("reason", shape=(n,), chunks=(chunk_clips,), dtype=str)
        group.create_array("chunk_stats", shape=(n_chunks(n, chunk_clips), 3), chunks=(1, 3), dtype="float64",
                           fill_value=0)
        for name, values in manifest_columns(manifest).items():
            group.create_array(name, shape=values.shape, chunks=(chunk_clips,) + values.shape[1:],
                               dtype=str if values.dtype.kind == "U" else values.dtype)[:] = values

    attrs = {
        "schema": SCHEMA,
        "feature_config": config.to_dict(),
        "codec": codec,
        "manifest_hash": manifest.hash(),
        "manifest_name": manifest.name,
        "vocabulary": manifest.vocabulary.to_records(),
        "multilabel": manifest.multilabel,
        "chunk_clips": chunk_clips,
        "n_clips": n,
        "audio_checks": audio_checks or {},
        "code_version": code_version(),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return create_store(path, build, attrs, n_chunks(n, chunk_clips))


def manifest_columns(manifest: Manifest) -> dict[str, np.ndarray]:
    """The per-clip arrays copied from the manifest when the store is laid out."""
    clips = manifest.clips
    return {"clip_id": clips["clip_id"].to_numpy(str), "split": clips["split"].to_numpy(str),
            "fold": clips["fold"].to_numpy(np.int16), "weight": clips["weight"].to_numpy(np.float32),
            "targets": manifest.targets()}


def restore_columns(group: zarr.Group, chunks: list[int], columns: dict[str, np.ndarray]) -> None:
    """Rewrite the laid-out per-clip arrays of damaged chunks before they are redone."""
    for index in chunks:
        start, stop = chunk_range(index, int(group.attrs["chunk_clips"]), int(group.attrs["n_clips"]))
        for name, values in columns.items():
            group[name][start:stop] = values[start:stop]


def open_for_writing(path: str | os.PathLike, manifest: Manifest, config: FeatureConfig,
                     audio_checks: dict | None = None) -> zarr.Group:
    """Open an existing store to resume it, refusing one built from another manifest or config; done
    chunks whose files are missing or altered are marked not done, so the run redoes exactly them."""
    group = open_store(path, SCHEMA, mode="r+")
    if group.attrs["manifest_hash"] != manifest.hash():
        raise StoreError(f"{path}: built from another manifest (hash {group.attrs['manifest_hash']} != "
                         f"{manifest.hash()}); pass --overwrite to rebuild it or choose another --out")
    diff = config.differences(FeatureConfig.from_dict(group.attrs["feature_config"]))
    if diff:
        raise StoreError(f"{path}: built with other feature settings ({'; '.join(diff)}); "
                         "pass --overwrite to rebuild it or choose another --out")
    if audio_checks is not None and group.attrs.get("audio_checks") != audio_checks:
        raise StoreError(f"{path}: built with other audio checks ({group.attrs.get('audio_checks')} != "
                         f"{audio_checks}); pass --overwrite to rebuild it or choose another --out")
    restore_columns(group, invalidate_damaged(group, path), manifest_columns(manifest))
    return group


@dataclass
class ChunkResult:
    """What one chunk task produced: its statistics and the clips it could not use."""

    index: int
    stats: tuple[float, float, float]
    bad: list[tuple[str, str]]  # (clip_id, reason)


def write_chunk(group: zarr.Group, index: int, fbank: np.ndarray, valid: np.ndarray, ok: np.ndarray,
                reasons: list[str], generation: str) -> tuple[float, float, float]:
    """Write one chunk's region, its statistics row, its file record, then its done marker (last)."""
    root = store_root(group)
    check_generation(group, root, generation)
    start, stop = chunk_range(index, group.attrs["chunk_clips"], group.attrs["n_clips"])
    group["fbank"][start:stop] = fbank.astype(np.float16)
    group["valid_frames"][start:stop] = valid
    group["ok"][start:stop] = ok
    group["reason"][start:stop] = np.array(reasons, dtype=str)
    stats = _chunk_statistics(fbank, valid, ok)
    group["chunk_stats"][index] = np.array(stats)
    check_generation(group, root, generation)
    record_chunk(group, root, index)
    mark_chunk_done(group, index)
    return stats


def _chunk_statistics(fbank: np.ndarray, valid: np.ndarray, ok: np.ndarray) -> tuple[float, float, float]:
    """Σx, Σx², count over the real (unpadded) frames of good clips, in float64."""
    total = total_sq = count = 0.0
    for clip, frames, good in zip(fbank, valid, ok):
        if good and frames:
            real = clip[:frames].astype(np.float64)
            total += real.sum()
            total_sq += np.square(real).sum()
            count += real.size
    return total, total_sq, count


def store_codec(group: zarr.Group) -> str:
    """The codec of a store's fbank; stores written before `features.codec` have zarr's default."""
    return str(group.attrs.get("codec", ZARR_DEFAULT))


def store_root(group: zarr.Group) -> Path:
    """The folder of a store opened from a local path."""
    return Path(group.store.root)


def finalize(group: zarr.Group, bad_clips: str | os.PathLike = "the bad clips list") -> dict:
    """Once every chunk is done: dataset mean/std over valid frames, bad count, content digest,
    `complete: true`."""
    if pending_chunks(group):
        raise StoreError("cannot finalize: chunks still pending")
    total, total_sq, count = np.asarray(group["chunk_stats"][:]).sum(axis=0)
    if count == 0:
        raise StoreError(f"no usable clip in the whole corpus: every clip was rejected (see {bad_clips})")
    mean = total / count
    std = math.sqrt(max(total_sq / count - mean * mean, 0.0))
    n_bad = int((~np.asarray(group["ok"][:])).sum())
    summary = {"mean": float(mean), "std": float(std), "n_bad": n_bad, "content_digest": content_digest(group)}
    group.attrs.update({**summary, "complete": True})
    return summary


def bad_clip_table(group: zarr.Group) -> pd.DataFrame:
    """clip_id and reason of every clip flagged as bad."""
    ok = np.asarray(group["ok"][:])
    done = np.repeat(np.asarray(group["chunk_done"][:]).astype(bool), group.attrs["chunk_clips"])[: len(ok)]
    rows = np.flatnonzero(~ok & done)
    return pd.DataFrame({"clip_id": read_strings(group["clip_id"])[rows],
                         "reason": read_strings(group["reason"])[rows]})


class FeatureStore:
    """Read side of a complete feature store, used by training, teacher inference and evaluation."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.group = open_store(self.path, SCHEMA, mode="r")
        require_complete(self.group, self.path)
        require_intact(self.group, self.path, "features")
        attrs = self.group.attrs
        self.feature_config = FeatureConfig.from_dict(attrs["feature_config"])
        self.codec: str = store_codec(self.group)
        self.vocabulary: list[dict] = list(attrs["vocabulary"])
        self.multilabel: bool = bool(attrs["multilabel"])
        self.chunk_clips: int = int(attrs["chunk_clips"])
        self.manifest_hash: str = attrs["manifest_hash"]
        self.content_digest: str = attrs["content_digest"]
        self.mean: float = float(attrs["mean"])
        self.std: float = float(attrs["std"])
        self.fbank = self.group["fbank"]
        self.clip_ids = read_strings(self.group["clip_id"])
        self.splits = read_strings(self.group["split"])
        self.folds = np.asarray(self.group["fold"][:])
        self.weights = np.asarray(self.group["weight"][:])
        self.targets = np.asarray(self.group["targets"][:])
        self.ok = np.asarray(self.group["ok"][:])
        self.valid_frames = np.asarray(self.group["valid_frames"][:])

    def __len__(self) -> int:
        return len(self.clip_ids)

    @property
    def n_classes(self) -> int:
        return len(self.vocabulary)

    @property
    def fingerprint(self) -> str:
        return feature_fingerprint(self.manifest_hash, self.feature_config)

    def normalization(self, divisor: float = 2.0) -> Normalization:
        return Normalization(self.mean, self.std, divisor)

    def select(self, spec: str) -> np.ndarray:
        """Indices of good clips matching a split spec: 'train', 'val,eval', 'fold==1', 'fold!=1', 'all', 'fold!=1&fold!=2'."""
        return self.ok.nonzero()[0][select_mask(spec, self.splits, self.folds)[self.ok]]

    def read(self, indices: np.ndarray | list[int], dtype: np.dtype | type | None = None) -> np.ndarray:
        """fbank rows [n, T, F] in the order given, as stored (float16) or cast to `dtype`.

        Rows are read as plain slices over runs of neighbouring chunks, so every chunk is decoded once;
        keep float16 when the rows go to a device and cast them there (pipeline.predict.to_device)."""
        rows = np.asarray(indices, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"{self.path}: rows must be in 0..{len(self) - 1}, got {rows.min()}..{rows.max()}")
        try:
            out = self._read_rows(rows)
        except Exception as error:  # a chunk damaged after the store was opened: name it
            raise StoreError(unreadable_chunk(self.path, "fbank", sorted(set((rows // self.chunk_clips).tolist())),
                                              self.chunk_clips, len(self), error)) from None
        return out if dtype is None else out.astype(dtype, copy=False)

    def _read_rows(self, rows: np.ndarray) -> np.ndarray:
        if rows.size and np.all(np.diff(rows) == 1):  # one contiguous run (a chunk, an epoch in store order)
            return np.asarray(self.fbank[int(rows[0]):int(rows[-1]) + 1])
        out = np.empty((len(rows), *self.fbank.shape[1:]), dtype=self.fbank.dtype)
        for where in _chunk_runs(rows // self.chunk_clips):
            first, last = int(rows[where].min()), int(rows[where].max())
            out[where] = np.asarray(self.fbank[first:last + 1])[rows[where] - first]
        return out


MAX_RUN_CHUNKS = 8  # at most this many chunks decoded into memory per slice of a scattered read


def _chunk_runs(chunks: np.ndarray) -> list[np.ndarray]:
    """Positions of the rows grouped by runs of neighbouring chunks (at most MAX_RUN_CHUNKS each), so
    one slice per group reads every chunk it needs once."""
    touched = np.unique(chunks)
    breaks = np.flatnonzero(np.diff(touched) != 1) + 1
    groups = []
    for run in np.split(touched, breaks):
        for start in range(0, len(run), MAX_RUN_CHUNKS):
            part = run[start:start + MAX_RUN_CHUNKS]
            groups.append(np.flatnonzero((chunks >= part[0]) & (chunks <= part[-1])))
    return groups


def select_mask(spec: str, splits: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Boolean mask for a split spec (see FeatureStore.select); `A&B` is the clips both A and B select
    (e.g. `fold!=1&fold!=2`: train on every fold but the test and the validation fold)."""
    spec = spec.strip()
    if "&" in spec:
        masks = [select_mask(part, splits, folds) for part in spec.split("&")]
        return np.logical_and.reduce(masks)
    if spec == "all":
        return np.ones(len(splits), dtype=bool)
    for op in ("==", "!="):
        if spec.startswith("fold" + op):
            try:
                fold = int(spec[len("fold") + 2:])
            except ValueError:
                raise StoreError(f"split spec {spec!r}: expected fold==K or fold!=K with an integer K") from None
            if fold not in set(folds.tolist()):
                raise StoreError(f"split spec {spec!r}: no clip has fold {fold} (folds: {sorted(set(folds.tolist()))})")
            return folds == fold if op == "==" else folds != fold
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = sorted(set(names) - set(splits.tolist()))
    if unknown:
        raise StoreError(f"split spec {spec!r}: unknown split(s) {unknown}; the store has {sorted(set(splits.tolist()))}")
    return np.isin(splits, names)
