"""Training-input benchmark on the built-in demo corpus, with the demo preset's models.

1. For the CNN and the AST: training clips/s and the share of step time spent getting the batch
   ready (data fraction), over the same clips and the same training step, with the input
   a. read from the Zarr feature store by the engine's `batches()` (chunk cache, prefetch thread), or
   b. decoded from the wav files with the fbank computed per clip, as the AST/PSLA loaders do.
   Data time is the wait for the batch plus augmentation and normalisation (the engine's measure).
2. Forward-pass timing of our AST against Hugging Face's (benchmarks/ast_forward.py).

    .venv/bin/python -m benchmarks.train [--steps 6] [--device cuda] [--work-dir DIR]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from benchmarks.ast_forward import compare_ast_forward
from cmkd_pipe.data_manifests.demo import make_demo_corpus
from cmkd_pipe.data_manifests.manifest import Manifest
from cmkd_pipe.pipeline.audio import load_audio
from cmkd_pipe.pipeline.config import FeatureConfig
from cmkd_pipe.pipeline.features import clip_features
from cmkd_pipe.pipeline.stores.feature_store import FeatureStore
from cmkd_pipe.pipeline.training.batches import Batch, batches
from cmkd_pipe.pipeline.training.distributed import DistInfo
from cmkd_pipe.pipeline.training.engine import Trainer, TrainRequest
from cmkd_pipe.pipeline.models.registry import configured_families
from cmkd_pipe.pipeline.training.presets import resolve_config
from cmkd_pipe.pipeline.training.setup import build_trainer
from cmkd_pipe.stages.features import run_features


def decoded_batches(manifest: Manifest, store: FeatureStore, order: np.ndarray, batch_size: int) -> Iterator[Batch]:
    """Batches of `order` (store rows = manifest rows) decoded from the wavs and fbanked clip by clip."""
    config = store.feature_config
    for start in range(0, len(order) - len(order) % batch_size, batch_size):
        rows = order[start:start + batch_size]
        clips = [clip_features(load_audio(manifest.audio_path(int(r)), config.sample_rate), config) for r in rows]
        yield Batch(rows, torch.stack([values for values, _ in clips]).numpy(),
                    store.targets[rows].astype(np.float32), np.array([frames for _, frames in clips], dtype=np.int32))


def timed_steps(trainer: Trainer, source: Iterator[Batch]) -> tuple[float, float]:
    """(clips/s, data fraction) of training steps fed by `source`; the first step is a warm-up."""
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    trainer.model.train()
    data = compute = 0.0
    clips = 0
    tick = time.perf_counter()
    for step, batch in enumerate(source):
        x, y, teacher = trainer.prepare(batch, step)
        sync()
        ready = time.perf_counter()
        total, _ = trainer.loss(trainer.model(x).float(), y, teacher)
        trainer.optimizer.zero_grad(set_to_none=True)
        total.backward()
        trainer.optimizer.step()
        sync()
        done = time.perf_counter()
        if step > 0:
            data, compute, clips = data + ready - tick, compute + done - ready, clips + len(batch.indices)
        tick = time.perf_counter()
    return clips / (data + compute), data / (data + compute)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=6, help="timed training steps per model and input path")
    parser.add_argument("--clips-per-class", type=int, default=40, help="demo corpus size (12 classes)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a temporary folder")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        manifest = make_demo_corpus(work / "demo", clips_per_class=args.clips_per_class)
        preset = resolve_config("demo")
        features = FeatureConfig(**preset["features"])
        run_features(work / "demo" / "manifest", work / "features.zarr", config=features, chunk_clips=32,
                     overwrite=True, progress=False)
        store = FeatureStore(work / "features.zarr")
        batch_size = preset["data"]["batch_size"]
        print(f"demo corpus: {len(manifest)} clips; store {features.target_frames} frames x "
              f"{features.num_mel_bins} bins; batch {batch_size}; {args.steps} timed steps; device {args.device}; "
              f"{torch.get_num_threads()} torch threads")
        print(f"\n{'model':6s} {'input':32s} {'clips/s':>9s} {'data fraction':>14s}")
        for arch in configured_families(preset):
            request = TrainRequest(features=work / "features.zarr", arch=arch, config=preset, out_dir=work / arch,
                                   device=args.device, progress=False)
            trainer = build_trainer(request, DistInfo(0, 1, torch.device(args.device)))
            order = trainer.sampler.rank_order()[: (args.steps + 1) * batch_size]
            for name, source in (("Zarr store (engine batches())", batches(store, order, batch_size)),
                                 ("decode wav + fbank per clip", decoded_batches(manifest, store, order, batch_size))):
                rate, fraction = timed_steps(trainer, source)
                print(f"{arch:6s} {name:32s} {rate:9.1f} {fraction:14.1%}")

    print()
    compare_ast_forward(args.device)


if __name__ == "__main__":
    main()
