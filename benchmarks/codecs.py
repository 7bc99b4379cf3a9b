"""Feature-store codecs compared on real fbank: store size, write cost and training-batch read cost.

Per shape, the demo corpus's feature store is copied once per codec of pipeline.stores.codecs (same
chunks). Every round then decodes every wav + Kaldi fbank (the AST loader), and per codec writes the
whole fbank into its copy and reads one epoch of 32-clip training batches from it
(benchmarks.features.training_batches), alternated, in one process. Per codec: its size on disk, the
paired ratio decode+fbank / read (the issue #13 goal: >= 20x) and the write's share of decode+fbank
(what the codec adds to the feature stage). docs/ARCHITECTURE.md quotes the run that chose DEFAULT_CODEC.

    python -m benchmarks.codecs [--quick] [--shapes 128x512,128x1024] [--clips-per-class 10] [--rounds 5]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.features import DECODE, codec_copy, decode_epoch, stored_bytes, training_batches
from benchmarks.paired import Results, add_arguments, alternate, demo_features, finish_arguments, paired, shape_name
from cmkd_pipe.data_manifests.manifest import Manifest
from cmkd_pipe.pipeline.stores.codecs import CODECS, DEFAULT_CODEC
from cmkd_pipe.pipeline.stores.feature_store import FeatureStore

def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--clips-per-class", type=int, help="demo corpus size, 12 classes (default 10; quick 3)")
    parser.add_argument("--codecs", default=",".join(CODECS), help="comma list (default: every named codec)")
    args = finish_arguments(parser.parse_args(argv))
    names = [name.strip() for name in args.codecs.split(",")]
    clips_per_class = args.clips_per_class or (3 if args.quick else 10)
    results = Results("codecs", args, models=())
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for shape in args.shape_list:
            name = shape_name(shape)
            store_path = demo_features(work, shape, clips_per_class)
            store, manifest = FeatureStore(store_path), Manifest.load(store_path.parent / "manifest")
            fbank = np.asarray(store.fbank[:])
            copies = {codec: codec_copy(store, work / f"{codec}-{name}.zarr", codec, fill=False) for codec in names}
            batches = training_batches(store)
            variants = {DECODE: lambda: decode_epoch(manifest, store.feature_config)}
            for codec, twin in copies.items():
                variants[f"write {codec}"] = lambda twin=twin: twin.fbank.__setitem__(slice(None), fbank)
                variants[f"read {codec}"] = lambda twin=twin: sum(twin.read(rows).size for rows in batches)
            times = alternate(variants, args.rounds)
            results.timings(f"one epoch of fbank, {name}", times)
            for codec in names:
                size, raw = stored_bytes(work / f"{codec}-{name}.zarr"), fbank.nbytes
                ratio = paired(times[DECODE], times[f"read {codec}"])
                results.ratio(f"codec/{codec}/{name}", f"decode+fbank / read, {codec}, {name}", times[DECODE],
                              times[f"read {codec}"], headline=False)
                write = paired(times[f"write {codec}"], times[DECODE])["median"]
                results.note(f"{name} {codec}{' (default)' if codec == DEFAULT_CODEC else ''}: "
                             f"{size / 2**20:.2f} MiB on disk, {size / raw:.3f} of the fbank's bytes; "
                             f"decode+fbank / read {ratio['median']:.1f}x ({ratio['min']:.1f}-{ratio['max']:.1f}), "
                             f"read {raw / 2**20 / float(np.median(times[f'read {codec}'])):.0f} MB/s; "
                             f"write / decode+fbank {write:.2f}")
    return results.finish(args.json)


if __name__ == "__main__":
    main()
