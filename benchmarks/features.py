"""Feature read path against decoding audio, and the feature stage with 1 and 2 Dask workers.

1. One epoch of input per shape (demo clips as long as the shape's frames): decoding every wav and
   computing its Kaldi fbank as AST's loader does, against reading the rows from the feature store
   - in 32-clip training batches (rows shuffled within chunks, as the chunk-aware sampler draws them),
   - in whole chunks (as the teacher-logits stage reads them),
   with `FeatureStore.read` as it was before issue #13 (an orthogonal selection of the sorted rows,
   scattered back, cast to float32 on the CPU, from a store in zarr's default codec, zstd) and as it is
   (slices over runs of neighbouring chunks, float16 as stored, cast on the device; also with the float32
   cast a CPU consumer pays, and from a copy of the fbank in the old default codec: the codec's share).
2. The feature stage on warm LocalClusters of 1 and of 2 workers, alternated, on a corpus of the last
   shape with enough clips for --stage-chunks chunks per worker (so fixed costs do not dominate).

    python -m benchmarks.features [--quick] [--shapes 128x512,128x1024] [--clips-per-class 10] [--rounds 5]
                                  [--stage-chunks 8]
"""
from __future__ import annotations

import argparse
import copy
import os
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.compliance.kaldi as kaldi
import zarr

from benchmarks.paired import Results, add_arguments, alternate, demo_features, finish_arguments, paired, shape_name
from cmkd_pipe.data_manifests.manifest import Manifest
from cmkd_pipe.pipeline.config import FeatureConfig
from cmkd_pipe.pipeline.stores.codecs import ZARR_DEFAULT, compressors
from cmkd_pipe.pipeline.stores.feature_store import FeatureStore

BATCH = 32
DECODE = "decode wav + fbank (AST loader)"


def read_before(store: FeatureStore, indices: np.ndarray) -> np.ndarray:
    """FeatureStore.read before issue #13: orthogonal selection of the sorted rows, scattered back, float32."""
    indices = np.asarray(indices)
    order = np.argsort(indices, kind="stable")
    rows = store.fbank.get_orthogonal_selection((indices[order],))
    out = np.empty_like(rows, dtype=np.float32)
    out[order] = rows
    return out


def training_batches(store: FeatureStore, seed: int = 0) -> list[np.ndarray]:
    """32-clip batches of every row: chunks in a random order, rows shuffled within each chunk."""
    rng = np.random.default_rng(seed)
    n, size = len(store), store.chunk_clips
    order = np.concatenate([rng.permutation(np.arange(c * size, min((c + 1) * size, n)))
                            for c in rng.permutation(-(-n // size))])
    return [order[i:i + BATCH] for i in range(0, n, BATCH)]


def chunk_reads(store: FeatureStore) -> list[np.ndarray]:
    return [np.arange(i, min(i + store.chunk_clips, len(store))) for i in range(0, len(store), store.chunk_clips)]


def decode_epoch(manifest: Manifest, config: FeatureConfig) -> int:
    """Decode every wav and compute its padded fbank on the fly, as the AST loader does."""
    total = 0
    for i in range(len(manifest)):
        data, rate = sf.read(manifest.audio_path(i), dtype="float32", always_2d=True)
        wav = torch.from_numpy(data.T.copy()).mean(dim=0, keepdim=True)
        assert rate == config.sample_rate, "the demo corpus is written at the feature rate"
        feats = kaldi.fbank(wav - wav.mean(), htk_compat=True, sample_frequency=config.sample_rate,
                            use_energy=False, window_type="hanning", num_mel_bins=config.num_mel_bins,
                            dither=0.0, frame_shift=config.frame_shift_ms)
        pad = config.target_frames - feats.shape[0]
        feats = torch.nn.functional.pad(feats, (0, 0, 0, pad)) if pad > 0 else feats[:config.target_frames]
        total += feats.numel()
    return total


def codec_copy(store: FeatureStore, path: Path, codec: str, fill: bool = True) -> FeatureStore:
    """The store's reader over a copy of its fbank array compressed with `codec` (same chunks), holding the
    same rows unless `fill` is false."""
    array = zarr.create_array(store=str(path), shape=store.fbank.shape, chunks=store.fbank.chunks, dtype="float16",
                              compressors=compressors(codec), overwrite=True)
    if fill:
        array[:] = store.fbank[:]
    twin = copy.copy(store)
    twin.fbank = array
    return twin


def read_variants(store: FeatureStore, manifest: Manifest, old: FeatureStore) -> dict:
    """`old`: the same fbank in the codec stores had before `features.codec` (zarr's default)."""
    batches, chunks = training_batches(store), chunk_reads(store)

    def read_all(reads: list[np.ndarray], read) -> int:
        return sum(read(rows).size for rows in reads)

    return {
        DECODE: lambda: decode_epoch(manifest, store.feature_config),
        "batches, before": lambda: read_all(batches, lambda rows: read_before(old, rows)),
        f"batches, now (float16, {store.codec})": lambda: read_all(batches, store.read),
        "batches, now + float32 on the CPU": lambda: read_all(batches, lambda rows: store.read(rows, np.float32)),
        "chunks, before": lambda: read_all(chunks, lambda rows: read_before(old, rows)),
        "chunks, now (float16)": lambda: read_all(chunks, store.read),
        f"batches, now, old codec ({ZARR_DEFAULT})": lambda: read_all(batches, old.read),
    }


def stored_bytes(array_path: Path) -> int:
    """Bytes of an array's chunk files on disk (its zarr.json left out)."""
    return sum(f.stat().st_size for f in array_path.rglob("*") if f.is_file() and f.name != "zarr.json")


def stage_variants(store_path: Path, clusters: dict[int, str]) -> dict:
    """One feature-stage run of the corpus behind `store_path` per cluster (into a scratch store)."""
    from cmkd_pipe.stages.features import run_features

    store = FeatureStore(store_path)

    def run(address: str) -> None:
        run_features(store_path.parent / "manifest", store_path.parent / "stage.zarr", config=store.feature_config,
                     chunk_clips=store.chunk_clips, scheduler=address, overwrite=True, progress=False)

    return {f"{workers} worker(s)": (lambda address=address: run(address)) for workers, address in clusters.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--clips-per-class", type=int, help="demo corpus size of the read comparison, 12 classes "
                                                            "(default 10; quick 5)")
    parser.add_argument("--stage-chunks", type=int, help="chunks per worker of the 2-worker feature stage "
                                                         "(default 8; quick 1)")
    parser.add_argument("--work-dir", type=Path, help="default: a temporary folder")
    args = finish_arguments(parser.parse_args(argv))
    clips_per_class = args.clips_per_class or (5 if args.quick else 10)
    stage_chunks = args.stage_chunks or (1 if args.quick else 8)
    if stage_chunks < 1:
        raise SystemExit(f"--stage-chunks must be >= 1, got {stage_chunks}")
    results = Results("features", args, models=())
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        for shape in args.shape_list:
            read_comparison(results, work, shape, clips_per_class, args.rounds)
        stage_scaling(results, work, args.shape_list[-1], stage_chunks, args.rounds)
    return results.finish(args.json)


def read_comparison(results: Results, work: Path, shape: tuple[int, int], clips_per_class: int, rounds: int) -> None:
    """Decoding against reading one epoch of input, for one shape."""
    name = shape_name(shape)
    store_path = demo_features(work, shape, clips_per_class)
    store, manifest = FeatureStore(store_path), Manifest.load(store_path.parent / "manifest")
    print(f"\n{name}: {len(store)} clips of {shape[1] / 100:g} s, chunks of {store.chunk_clips}, codec {store.codec}")
    old = codec_copy(store, work / f"{ZARR_DEFAULT}-{name}.zarr", ZARR_DEFAULT)
    times = alternate(read_variants(store, manifest, old), rounds)
    results.timings(f"one epoch of input, {name}", times)
    decode, now = times[DECODE], times[f"batches, now (float16, {store.codec})"]
    results.ratio(f"read_vs_decode/{name}", f"decode+fbank / feature-store read, 32-clip batches, {name}",
                  decode, now, goal=(">=", 20.0), before=paired(decode, times["batches, before"]),
                  why_not="other work on the shared machine slows the reads more than the decoding")
    results.ratio(f"read_f32_vs_decode/{name}", f"decode+fbank / read + float32 cast on the CPU, {name}",
                  decode, times["batches, now + float32 on the CPU"], headline=False,
                  before=paired(decode, times["batches, before"]))
    results.ratio(f"chunk_read_vs_decode/{name}", f"decode+fbank / feature-store read, whole chunks, {name}",
                  decode, times["chunks, now (float16)"], headline=False,
                  before=paired(decode, times["chunks, before"]))
    old_times = times[f"batches, now, old codec ({ZARR_DEFAULT})"]
    results.ratio(f"old_codec_read_vs_decode/{name}", f"decode+fbank / read of the same fbank in the old default "
                  f"codec ({ZARR_DEFAULT}), {name}", decode, old_times, headline=False)
    results.ratio(f"old_codec_vs_codec_read/{name}", f"read in {ZARR_DEFAULT} / read in {store.codec}, {name}",
                  old_times, now, headline=False)
    size, old_size = stored_bytes(store_path / "fbank"), stored_bytes(work / f"{ZARR_DEFAULT}-{name}.zarr")
    megabytes, fastest = store.fbank.nbytes / 2**20, float(np.median(now))
    results.note(f"{name}: the read path gives {megabytes / fastest:.0f} MB/s of float16 fbank, "
                 f"{len(store) / fastest:.0f} clips/s, in one process (32-clip training batches); the fbank "
                 f"takes {size / old_size:.3f} of its size in {ZARR_DEFAULT} ({size / store.fbank.nbytes:.3f} of "
                 f"its decoded bytes)")


def stage_scaling(results: Results, work: Path, shape: tuple[int, int], chunks_per_worker: int, rounds: int) -> None:
    """The feature stage on warm clusters of 1 and 2 workers, over a corpus of `shape` with enough clips for
    `chunks_per_worker` chunks per worker of the 2-worker cluster."""
    from cmkd_pipe.pipeline.parallel import local_cluster

    classes, chunk_clips = 12, 32  # the demo corpus, demo_features' chunks
    store_path = demo_features(work, shape, -(-2 * chunks_per_worker * chunk_clips // classes), chunk_clips)
    n_clips = len(FeatureStore(store_path))
    print(f"\nfeature stage, {n_clips} clips of {shape[1] / 100:g} s ({-(-n_clips // chunk_clips)} chunks), "
          "warm LocalClusters of 1 and 2 workers")
    before = os.getloadavg()
    with local_cluster(1) as one, local_cluster(2) as two:
        times = alternate(stage_variants(store_path, {1: one.scheduler_address, 2: two.scheduler_address}), rounds)
    after = os.getloadavg()
    results.timings(f"feature stage (warm clusters), {n_clips} clips", times)
    load, cores = before[0], os.cpu_count() or 1
    busy = f"the machine had a load average of {load:.1f} on {cores} cores before the run: other work took cores"
    serial = ("what stays serial (the driver lays out and finalises the store, the client round trips) and the "
              f"driver and scheduler sharing the {cores} cores with the two workers")
    results.ratio("features_2_vs_1_workers", f"feature stage, 1 worker / 2 workers, {store_path.parent.name}",
                  times["1 worker(s)"], times["2 worker(s)"], goal=(">=", 1.8),
                  why_not=busy if load >= cores - 0.5 else serial)
    results.note(f"feature stage: {n_clips} clips, {chunks_per_worker} chunks per worker of 2; load average "
                 f"(1/5/15 min) {'/'.join(f'{v:.1f}' for v in before)} before, "
                 f"{'/'.join(f'{v:.1f}' for v in after)} after")


if __name__ == "__main__":
    main()
