"""Feature stage: audio of a manifest → Kaldi fbank in a chunked Zarr store, run by Dask, resumable.

Inputs:  a manifest folder (data_manifests/manifest.py).
Outputs: OUT (feature store, schema cmkd-pipe/features/2) and `<OUT name>.bad_clips.csv` beside it.
Resume:  chunks marked done and intact (files match their recorded sha256) are skipped, damaged ones
         are redone; the store is `complete` only when every chunk is done and the share of bad clips is
         at most `max_bad_fraction`. One writer at a time (a lock beside the store).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cmkd_pipe.data_manifests.manifest import Manifest
from cmkd_pipe.pipeline.audio import DEFAULT_MIN_LEVEL, AudioError, load_audio
from cmkd_pipe.pipeline.config import FeatureConfig
from cmkd_pipe.pipeline.features import clip_features
from cmkd_pipe.pipeline.parallel import run_tasks
from cmkd_pipe.pipeline.records import atomic_path
from cmkd_pipe.pipeline.stores import feature_store as fs
from cmkd_pipe.pipeline.stores.codecs import DEFAULT_CODEC, check_codec
from cmkd_pipe.pipeline.stores.chunks import (StoreError, chunk_range, pending_chunks, prepare_output,
                                    write_errors_as_store_errors)
from cmkd_pipe.pipeline.stores.lock import store_lock


class TooManyBadClips(RuntimeError):
    """More clips than allowed could not be read; see the bad clips list beside the store."""


@dataclass(frozen=True)
class ChunkTask:
    store: str
    index: int
    clips: list[tuple[str, str]]  # (clip_id, audio path)
    feature_config: dict
    max_channels: int
    min_level: float
    generation: str


def bad_clips_path(store: str | os.PathLike) -> Path:
    """`<store name>.bad_clips.csv` beside the store (two stores in one folder keep their own list)."""
    store = Path(store)
    return store.with_name(f"{store.name}.bad_clips.csv")


def check_settings(config: FeatureConfig, chunk_clips: int, max_bad_fraction: float, min_level: float,
                   codec: str = DEFAULT_CODEC) -> None:
    """One-line errors for settings no store can be built with."""
    check_codec(codec)
    for name, value in (("chunk_clips", chunk_clips), ("target_frames", config.target_frames),
                        ("num_mel_bins", config.num_mel_bins), ("sample_rate", config.sample_rate)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    if not 0.0 <= max_bad_fraction <= 1.0:
        raise ValueError(f"max_bad_fraction must be between 0 and 1 (a share of the clips), got {max_bad_fraction}")
    if not 0.0 <= min_level < 1.0:
        raise ValueError(f"min_level must be in [0, 1) (a level in full scale), got {min_level}")


def run_features(manifest_dir: str | os.PathLike, out: str | os.PathLike, *, config: FeatureConfig,
                 chunk_clips: int = 64, scheduler: str | None = None, n_workers: int | None = None,
                 max_bad_fraction: float = 0.05, max_channels: int = 8, min_level: float = DEFAULT_MIN_LEVEL,
                 codec: str = DEFAULT_CODEC, overwrite: bool = False, progress: bool = True) -> dict:
    """Build or resume the feature store for a manifest; return a summary dict.

    `min_level`: clips whose peak, or whose spread after removing the mean (DC), is below it are bad.
    `codec`: how a new store's fbank is compressed (pipeline.stores.codecs); bytes on disk, not values, so
    not part of the store's identity: a resumed store keeps the codec it was created with.
    """
    check_settings(config, chunk_clips, max_bad_fraction, min_level, codec)
    # missing audio is reported per clip below; rows in store order (Manifest.in_store_order)
    manifest = Manifest.load(manifest_dir, check_files=False).in_store_order()
    out = Path(out)
    with store_lock(out, "features"):
        return _run_locked(manifest, out, config, chunk_clips, scheduler, n_workers, max_bad_fraction,
                           max_channels, min_level, codec, overwrite, progress)


def _run_locked(manifest: Manifest, out: Path, config: FeatureConfig, chunk_clips: int, scheduler: str | None,
                n_workers: int | None, max_bad_fraction: float, max_channels: int, min_level: float,
                codec: str, overwrite: bool, progress: bool) -> dict:
    audio_checks = {"max_channels": max_channels, "min_level": min_level}
    if prepare_output(out, fs.SCHEMA, overwrite, "features"):
        group = fs.open_for_writing(out, manifest, config, audio_checks)
    else:
        group = fs.create_feature_store(out, manifest, config, chunk_clips, audio_checks, codec)
    chunk_clips = group.attrs["chunk_clips"]
    todo = pending_chunks(group)
    clips = _clip_list(manifest)
    tasks = [_task(out, clips, i, chunk_clips, config, max_channels, min_level, group.attrs["generation"])
             for i in todo]
    run_tasks(compute_chunk, tasks, scheduler=scheduler, n_workers=n_workers, desc="features",
              progress=progress)
    bad = fs.bad_clip_table(group).merge(manifest.clips[["clip_id", "path"]], on="clip_id", how="left")
    bad = bad.sort_values("clip_id", ignore_index=True)
    bad = bad[["clip_id", "path", "reason"]]
    with write_errors_as_store_errors(bad_clips_path(out)):
        with atomic_path(bad_clips_path(out)) as tmp:
            bad.to_csv(tmp, index=False)
    fraction = len(bad) / len(manifest)
    summary = {"store": str(out), "clips": len(manifest), "chunks": group.attrs["n_chunks"],
               "chunks_run": len(todo), "codec": fs.store_codec(group), "bad": len(bad), "bad_fraction": fraction}
    if fraction > max_bad_fraction:
        raise TooManyBadClips(
            f"{len(bad)} of {len(manifest)} clips ({fraction:.1%}) could not be used, more than the allowed "
            f"{max_bad_fraction:.1%}; see {bad_clips_path(out)}, fix or drop them, or raise --max-bad-fraction")
    with write_errors_as_store_errors(out):
        summary.update(fs.finalize(group, bad_clips_path(out)))
    return summary


def _clip_list(manifest: Manifest) -> list[tuple[str, str]]:
    """(clip_id, audio path) of every row, built once in the driver (per-row lookups took 0.2 ms a clip)."""
    root = manifest.root
    paths = [str(Path(path) if Path(path).is_absolute() else root / path) for path in manifest.clips["path"]]
    return list(zip(manifest.clips["clip_id"].astype(str), paths))


def _task(out: Path, clips: list[tuple[str, str]], index: int, chunk_clips: int, config: FeatureConfig,
          max_channels: int, min_level: float, generation: str) -> ChunkTask:
    start, stop = chunk_range(index, chunk_clips, len(clips))
    return ChunkTask(str(out), index, clips[start:stop], config.to_dict(), max_channels, min_level, generation)


def compute_chunk(task: ChunkTask) -> fs.ChunkResult:
    """Decode, fbank and write one chunk (runs on a Dask worker)."""
    import zarr

    torch.set_num_threads(1)
    config = FeatureConfig.from_dict(task.feature_config)
    n = len(task.clips)
    feats = np.zeros((n, config.target_frames, config.num_mel_bins), dtype=np.float32)
    valid = np.zeros(n, dtype=np.int32)
    ok = np.zeros(n, dtype=bool)
    reasons = [""] * n
    bad = []
    for row, (clip_id, path) in enumerate(task.clips):
        try:
            wave = load_audio(path, config.sample_rate, max_channels=task.max_channels,
                              min_samples=int(config.sample_rate * config.frame_length_ms / 1000),
                              min_level=task.min_level)
            values, frames = clip_features(wave, config)
            if not torch.isfinite(values).all():
                raise AudioError(path, "non-finite", "fbank has NaN/inf values")
        except AudioError as error:
            reasons[row] = f"{error.reason}: {error.detail}" if error.detail else error.reason
            bad.append((clip_id, reasons[row]))
            continue
        feats[row], valid[row], ok[row] = values.numpy(), frames, True
    group = zarr.open_group(store=task.store, mode="r+")
    if group.attrs.get("schema") != fs.SCHEMA:
        raise StoreError(f"{task.store}: not a feature store")
    stats = fs.write_chunk(group, task.index, feats, valid, ok, reasons, task.generation)
    return fs.ChunkResult(task.index, stats, bad)
