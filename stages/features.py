"""Feature stage: audio of a manifest → Kaldi fbank in a chunked Zarr store, run by Dask, resumable.

Inputs:  a manifest folder (data_manifests/manifest.py).
Outputs: OUT (feature store, schema cmkd-pipe/features/1) and bad_clips.csv beside it.
Resume:  chunks marked done are skipped; the store is `complete` only when every chunk is done and
         the share of bad clips is at most `max_bad_fraction`.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data_manifests.manifest import Manifest
from pipeline.audio import AudioError, load_audio
from pipeline.config import FeatureConfig
from pipeline.features import clip_features
from pipeline.parallel import run_tasks
from pipeline.records import atomic_path
from pipeline.stores import feature_store as fs
from pipeline.stores.chunks import StoreError, chunk_range, pending_chunks, write_errors_as_store_errors


class TooManyBadClips(RuntimeError):
    """More clips than allowed could not be read; see bad_clips.csv."""


@dataclass(frozen=True)
class ChunkTask:
    store: str
    index: int
    clips: list[tuple[str, str]]  # (clip_id, audio path)
    feature_config: dict
    max_channels: int


def bad_clips_path(store: str | os.PathLike) -> Path:
    return Path(store).parent / "bad_clips.csv"


def run_features(manifest_dir: str | os.PathLike, out: str | os.PathLike, *, config: FeatureConfig,
                 chunk_clips: int = 64, scheduler: str | None = None, n_workers: int | None = None,
                 max_bad_fraction: float = 0.05, max_channels: int = 8, overwrite: bool = False,
                 progress: bool = True) -> dict:
    """Build or resume the feature store for a manifest; return a summary dict."""
    manifest = Manifest.load(manifest_dir, check_files=False)  # missing audio is reported per clip below
    out = Path(out)
    if overwrite and out.exists():
        shutil.rmtree(out)
    if out.exists() and not (out / "zarr.json").is_file():
        raise StoreError(f"{out}: exists but is not a Zarr store; pass --overwrite to replace it "
                         "or choose another --out")
    if out.exists():
        group = fs.open_for_writing(out, manifest, config)
    else:
        group = fs.create_feature_store(out, manifest, config, chunk_clips)
    chunk_clips = group.attrs["chunk_clips"]
    todo = pending_chunks(group)
    tasks = [_task(out, manifest, i, chunk_clips, config, max_channels) for i in todo]
    run_tasks(compute_chunk, tasks, scheduler=scheduler, n_workers=n_workers, desc="features",
              progress=progress)
    bad = fs.bad_clip_table(group).merge(manifest.clips[["clip_id", "path"]], on="clip_id", how="left")
    bad = bad[["clip_id", "path", "reason"]]
    with write_errors_as_store_errors(bad_clips_path(out)):
        with atomic_path(bad_clips_path(out)) as tmp:
            bad.to_csv(tmp, index=False)
    fraction = len(bad) / len(manifest)
    summary = {"store": str(out), "clips": len(manifest), "chunks": group.attrs["n_chunks"],
               "chunks_run": len(todo), "bad": len(bad), "bad_fraction": fraction}
    if fraction > max_bad_fraction:
        raise TooManyBadClips(
            f"{len(bad)} of {len(manifest)} clips ({fraction:.1%}) could not be used, more than the allowed "
            f"{max_bad_fraction:.1%}; see {bad_clips_path(out)}, fix or drop them, or raise --max-bad-fraction")
    with write_errors_as_store_errors(out):
        summary.update(fs.finalize(group))
    return summary


def _task(out: Path, manifest: Manifest, index: int, chunk_clips: int, config: FeatureConfig,
          max_channels: int) -> ChunkTask:
    start, stop = chunk_range(index, chunk_clips, len(manifest))
    clips = [(manifest.clips.at[i, "clip_id"], str(manifest.audio_path(i))) for i in range(start, stop)]
    return ChunkTask(str(out), index, clips, config.to_dict(), max_channels)


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
                              min_samples=int(config.sample_rate * config.frame_length_ms / 1000))
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
    stats = fs.write_chunk(group, task.index, feats, valid, ok, reasons)
    return fs.ChunkResult(task.index, stats, bad)
