"""Feature read path against decoding audio, and the feature stage with 1 and 2 Dask workers.

1. One epoch of input per shape (demo clips as long as the shape's frames): decoding every wav and
   computing its Kaldi fbank as AST's loader does, against reading the rows from the feature store
   - in 32-clip training batches (rows shuffled within chunks, as the chunk-aware sampler draws them),
   - in whole chunks (as the teacher-logits stage reads them),
   with `FeatureStore.read` as it was before issue #13 (an orthogonal selection of the sorted rows,
   scattered back, cast to float32 on the CPU) and as it is (slices over runs of neighbouring chunks,
   float16 as stored, cast on the device; also with the float32 cast a CPU consumer pays), and, as a
   what-if, the same reads from an uncompressed copy of the fbank (zstd decoding is most of the read).
2. The feature stage on warm LocalClusters of 1 and of 2 workers (the last shape), alternated.

    python -m benchmarks.features [--quick] [--shapes 128x512,128x1024] [--clips-per-class 10] [--rounds 5]
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
from cmkd_pipe.pipeline.stores.feature_store import FeatureStore

BATCH = 32


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


def uncompressed_copy(store: FeatureStore, path: Path) -> FeatureStore:
    """The store's reader over a copy of its fbank without compression (a what-if: zstd decoding is most
    of the read time, for a 1.2x smaller store)."""
    raw = zarr.create_array(store=str(path), shape=store.fbank.shape, chunks=store.fbank.chunks, dtype="float16",
                            compressors=None, overwrite=True)
    raw[:] = store.fbank[:]
    twin = copy.copy(store)
    twin.fbank = raw
    return twin


def read_variants(store: FeatureStore, manifest: Manifest, raw: FeatureStore) -> dict:
    batches, chunks = training_batches(store), chunk_reads(store)

    def read_all(reads: list[np.ndarray], read) -> int:
        return sum(read(rows).size for rows in reads)

    return {
        "decode wav + fbank (AST loader)": lambda: decode_epoch(manifest, store.feature_config),
        "batches, before": lambda: read_all(batches, lambda rows: read_before(store, rows)),
        "batches, now (float16)": lambda: read_all(batches, store.read),
        "batches, now + float32 on the CPU": lambda: read_all(batches, lambda rows: store.read(rows, np.float32)),
        "chunks, before": lambda: read_all(chunks, lambda rows: read_before(store, rows)),
        "chunks, now (float16)": lambda: read_all(chunks, store.read),
        "batches, now, uncompressed copy": lambda: read_all(batches, raw.read),
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
    parser.add_argument("--clips-per-class", type=int, help="demo corpus size, 12 classes (default 10; quick 5)")
    parser.add_argument("--work-dir", type=Path, help="default: a temporary folder")
    args = finish_arguments(parser.parse_args(argv))
    clips_per_class = args.clips_per_class or (5 if args.quick else 10)
    results = Results("features", args, models=())
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        for shape in args.shape_list:
            name = shape_name(shape)
            store_path = demo_features(work, shape, clips_per_class)
            store, manifest = FeatureStore(store_path), Manifest.load(store_path.parent / "manifest")
            print(f"\n{name}: {len(store)} clips of {shape[1] / 100:g} s, chunks of {store.chunk_clips}")
            raw = uncompressed_copy(store, work / f"uncompressed-{name}.zarr")
            times = alternate(read_variants(store, manifest, raw), args.rounds)
            results.timings(f"one epoch of input, {name}", times)
            decode = times["decode wav + fbank (AST loader)"]
            raw_ratio = paired(decode, times["batches, now, uncompressed copy"])["median"]
            results.ratio(f"read_vs_decode/{name}", f"decode+fbank / feature-store read, 32-clip batches, {name}",
                          decode, times["batches, now (float16)"], goal=(">=", 20.0),
                          before=paired(decode, times["batches, before"]),
                          why_not=f"zstd decoding is most of the read: from an uncompressed copy the same reads are "
                                  f"{raw_ratio:.0f}x cheaper than decode+fbank, for a store "
                                  f"{compression(store_path):.2f}x larger (a codec choice left open)")
            results.ratio(f"read_f32_vs_decode/{name}", f"decode+fbank / read + float32 cast on the CPU, {name}",
                          decode, times["batches, now + float32 on the CPU"], headline=False,
                          before=paired(decode, times["batches, before"]))
            results.ratio(f"chunk_read_vs_decode/{name}", f"decode+fbank / feature-store read, whole chunks, {name}",
                          decode, times["chunks, now (float16)"], headline=False,
                          before=paired(decode, times["chunks, before"]))
            results.ratio(f"raw_read_vs_decode/{name}", f"decode+fbank / read of an uncompressed copy, {name} "
                          "(what-if)", decode, times["batches, now, uncompressed copy"], headline=False)
            megabytes = store.fbank.nbytes / 2**20
            fastest = float(np.median(times["batches, now (float16)"]))
            results.note(f"{name}: the read path gives {megabytes / fastest:.0f} MB/s of float16 fbank, "
                         f"{len(store) / fastest:.0f} clips/s, in one process (32-clip training batches)")
        stage_scaling(results, store_path, args.rounds)
    return results.finish(args.json)


def stage_scaling(results: Results, store_path: Path, rounds: int) -> None:
    """The feature stage of the last shape's corpus on warm clusters of 1 and 2 workers."""
    from cmkd_pipe.pipeline.parallel import local_cluster

    print(f"\nfeature stage, {store_path.parent.name}, warm LocalClusters of 1 and 2 workers")
    with local_cluster(1) as one, local_cluster(2) as two:
        times = alternate(stage_variants(store_path, {1: one.scheduler_address, 2: two.scheduler_address}), rounds)
    results.timings("feature stage (warm clusters)", times)
    load, cores = os.getloadavg()[1], os.cpu_count()
    results.ratio("features_2_vs_1_workers", f"feature stage, 1 worker / 2 workers, {store_path.parent.name}",
                  times["1 worker(s)"], times["2 worker(s)"], goal=(">=", 1.8),
                  why_not=f"the goal is for an idle machine; this one had a load average of {load:.1f} on {cores} "
                          "cores, so the second worker competed with other work for the cores")


if __name__ == "__main__":
    main()
