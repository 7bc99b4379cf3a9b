"""Feature-stage benchmark on the built-in demo corpus.

1. Stage throughput (clips/s) with 1 and 2 Dask workers: end to end (a new LocalCluster, as
   `cmkd-pipe features` runs) and steady state (a second run on an already warm cluster).
2. Per-epoch input cost for training: reading the whole Zarr store with FeatureStore.read over
   chunk-ordered batches, against decoding every wav and computing its fbank on the fly as the
   AST data loader does (soundfile decode, DC removal, Kaldi fbank, pad/trim).

    .venv/bin/python benchmarks/features.py [--clips-per-class 40] [--workers 1,2] [--work-dir DIR]
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.compliance.kaldi as kaldi

from cmkd_pipe.data_manifests.demo import make_demo_corpus
from cmkd_pipe.data_manifests.manifest import Manifest
from cmkd_pipe.pipeline.audio import resample
from cmkd_pipe.pipeline.config import FeatureConfig
from cmkd_pipe.pipeline.stores.feature_store import FeatureStore
from cmkd_pipe.stages.features import run_features


def seconds(fn: Callable[[], object]) -> float:
    """Wall time of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def best_of(repeats: int, fn: Callable[[], object]) -> float:
    """Smallest wall time of `repeats` calls."""
    return min(seconds(fn) for _ in range(repeats))


def stage_seconds(manifest_dir: Path, store: Path, config: FeatureConfig, chunk_clips: int,
                  workers: int) -> tuple[float, float]:
    """(end-to-end seconds with a new LocalCluster, seconds of a rerun on a warm cluster)."""
    from distributed import LocalCluster

    def run(**kwargs) -> None:
        run_features(manifest_dir, store, config=config, chunk_clips=chunk_clips, overwrite=True,
                     progress=False, **kwargs)

    cold = seconds(lambda: run(n_workers=workers))
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.ERROR) as cluster:
        run(scheduler=cluster.scheduler_address)  # warm-up: worker imports
        warm = seconds(lambda: run(scheduler=cluster.scheduler_address))
    return cold, warm


def read_epoch(store: FeatureStore, batch: int) -> int:
    """Read every clip once in chunk-ordered batches; return the number of values read."""
    total = 0
    for start in range(0, len(store), batch):
        total += store.read(np.arange(start, min(start + batch, len(store)))).size
    return total


def decode_epoch(manifest: Manifest, config: FeatureConfig) -> int:
    """Decode every wav and compute its padded fbank on the fly, as the AST loader does."""
    total = 0
    for i in range(len(manifest)):
        data, rate = sf.read(manifest.audio_path(i), dtype="float32", always_2d=True)
        wav = torch.from_numpy(data.T.copy()).mean(dim=0, keepdim=True)
        if rate != config.sample_rate:
            wav = resample(wav, rate, config.sample_rate)
        feats = kaldi.fbank(wav - wav.mean(), htk_compat=True, sample_frequency=config.sample_rate,
                            use_energy=False, window_type="hanning", num_mel_bins=config.num_mel_bins,
                            dither=0.0, frame_shift=config.frame_shift_ms)
        pad = config.target_frames - feats.shape[0]
        feats = torch.nn.functional.pad(feats, (0, 0, 0, pad)) if pad > 0 else feats[:config.target_frames]
        total += feats.numel()
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips-per-class", type=int, default=40, help="demo corpus size (12 classes)")
    parser.add_argument("--clip-seconds", type=float, default=2.0)
    parser.add_argument("--corpus-rate", type=int, default=16000, help="sample rate of the demo wav files")
    parser.add_argument("--target-frames", type=int, default=200)
    parser.add_argument("--chunk-clips", type=int, default=32)
    parser.add_argument("--workers", default="1,2", help="comma list of LocalCluster sizes")
    parser.add_argument("--repeats", type=int, default=3, help="epoch timings: best of this many")
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a temporary folder")
    args = parser.parse_args()

    torch.set_num_threads(1)  # one data-loader process's view, and what every Dask task uses
    config = FeatureConfig(target_frames=args.target_frames)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        make_demo_corpus(work / "demo", clips_per_class=args.clips_per_class, clip_seconds=args.clip_seconds,
                         sample_rate=args.corpus_rate)
        manifest_dir, store_path = work / "demo" / "manifest", work / "features.zarr"
        manifest = Manifest.load(manifest_dir)
        n = len(manifest)
        print(f"demo corpus: {n} clips of {args.clip_seconds:g} s at {args.corpus_rate} Hz; "
              f"store: {args.target_frames} frames x {config.num_mel_bins} bins, {args.chunk_clips} clips/chunk")

        print("\nfeature stage                 seconds   clips/s")
        for workers in [int(w) for w in args.workers.split(",")]:
            cold, warm = stage_seconds(manifest_dir, store_path, config, args.chunk_clips, workers)
            print(f"  {workers} worker(s), new cluster  {cold:8.2f}  {n / cold:8.1f}")
            print(f"  {workers} worker(s), warm cluster {warm:8.2f}  {n / warm:8.1f}")

        store = FeatureStore(store_path)
        assert read_epoch(store, args.chunk_clips) == decode_epoch(manifest, config)  # same amount of data
        from_store = best_of(args.repeats, lambda: read_epoch(store, args.chunk_clips))
        on_the_fly = best_of(args.repeats, lambda: decode_epoch(manifest, config))
        print(f"\none epoch of input ({n} clips, 1 thread, best of {args.repeats})   seconds   clips/s")
        print(f"  Zarr store, chunk-ordered batches        {from_store:8.3f}  {n / from_store:8.1f}")
        print(f"  decode wav + fbank per clip (AST loader) {on_the_fly:8.3f}  {n / on_the_fly:8.1f}")
        print(f"  ratio on-the-fly / store                 {on_the_fly / from_store:8.1f}x")


if __name__ == "__main__":
    main()
