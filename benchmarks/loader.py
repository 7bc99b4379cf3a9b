"""Training input path: the data share of a paper-pair student step, and how many clips/s the loader feeds.

For each shape: demo clips as long as the shape's frames, their feature store, and a 3-view teacher-logits
store (written by a tiny teacher: the student's input cost does not depend on which teacher wrote the
logits). Variants, alternated round by round:
- the student step (default EfficientNet-B2) with cached logits, 3 views, through the engine itself
  (`Trainer.train_epoch`, `data.loader_workers=0`: the CPU default), --steps steps of --batch clips; its
  data share is the engine's data time (waiting for the step's batch, copying it, building the augmented
  input, teacher targets) over the step time;
- the loader alone with 0, 1, 2 ... workers (--workers): one epoch of steps of --loader-batch clips over
  every clip (the sampler's chunk-local order, a new epoch every round), the CPU half of every step (rows
  read as float16, view draws and parameters, partner rows, cached logits) without a model. Each worker
  keeps a cache of one sampler window (4 chunks), as for a store far larger than the resident cache, so
  every round decodes the chunks again. MB/s counts the float16 rows a step ships (batch and view partners).

The clips/s a GPU could be fed is estimated from the measured loader throughput: the best rate here, and
per worker (one core each) times the workers of a GPU host, bounded by the read throughput in MB/s over the
bytes of one clip.

    python -m benchmarks.loader [--quick] [--student efficientnet-b2] [--shapes 128x512,128x1024]
                                [--steps 2] [--batch 2] [--loader-batch 32] [--workers 0,1,2]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.kd import VIEWS, make_trainer, student_overrides, timed_epoch
from benchmarks.paired import (MODELS, Results, Seconds, add_arguments, alternate, demo_features, finish_arguments,
                               random_checkpoint, shape_name)
from cmkd_pipe.pipeline.parallel import SYNCHRONOUS
from cmkd_pipe.pipeline.stores.chunk_cache import ChunkCache
from cmkd_pipe.pipeline.stores.feature_store import FeatureStore
from cmkd_pipe.pipeline.training.loader import Step, StepDataset, StepLoader
from cmkd_pipe.pipeline.training.sampler import ChunkAwareSampler
from cmkd_pipe.stages.teacher_logits import run_teacher_logits

GPU_HOST_WORKERS = 8  # loader workers a GPU host spares (one core each) for the estimate
WINDOW_CHUNKS = 4  # the sampler's default window: the chunks a batch draws from


class StreamingDataset(StepDataset):
    """A StepDataset whose feature cache holds one sampler window, not the whole store."""

    def open(self) -> tuple[FeatureStore, ChunkCache]:
        if self._store is None or self._cache is None:
            self._store = FeatureStore(self.features)
            self._cache = ChunkCache(self._store.fbank, self._store.chunk_clips, capacity=WINDOW_CHUNKS)
        return self._store, self._cache


class LoaderEpochs:
    """One epoch of steps through a StepLoader per call: seconds, clips and float16 bytes shipped."""

    def __init__(self, loader: StepLoader, sampler: ChunkAwareSampler, batch: int) -> None:
        self.loader, self.sampler, self.batch = loader, sampler, batch
        self.epoch = 0
        self.clips: list[int] = []
        self.bytes: list[int] = []

    def __call__(self) -> Seconds:
        order = self.sampler.rank_order(self.epoch)
        steps = [Step(self.epoch, k, order[k * self.batch:(k + 1) * self.batch]) for k in range(len(order) // self.batch)]
        self.epoch += 1
        clips = shipped = 0
        start = time.perf_counter()
        for batch in self.loader(steps):
            clips += len(batch.rows)
            shipped += batch.source.numel() * batch.source.element_size()
        seconds = time.perf_counter() - start
        self.clips.append(clips)
        self.bytes.append(shipped)
        return Seconds(seconds)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--steps", type=int, default=2, help="student steps per round")
    parser.add_argument("--batch", type=int, default=2, help="clips per student step")
    parser.add_argument("--loader-batch", type=int, default=32, help="clips per step of the loader-only variants")
    parser.add_argument("--workers", default="0,1,2", help="loader worker counts to measure (comma list)")
    parser.add_argument("--clips-per-class", type=int, default=8, help="demo clips per class, 12 classes")
    parser.add_argument("--work-dir", type=Path, help="default: a temporary folder")
    args = finish_arguments(parser.parse_args(argv))
    if args.quick:
        args.clips_per_class, args.loader_batch = min(args.clips_per_class, 4), min(args.loader_batch, 8)
    workers = [int(w) for w in args.workers.split(",")]
    results = Results("loader", args, models=("student",))
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        for shape in args.shape_list:
            name = shape_name(shape)
            features = demo_features(work, shape, args.clips_per_class, chunk_clips=8)
            tiny = random_checkpoint(work / f"tiny-{name}.pt", MODELS["ast-tiny"], features)
            logits = work / f"logits-{name}.zarr"
            run_teacher_logits(features, tiny, logits, views=3, **VIEWS, scheduler=SYNCHRONOUS, device="cpu",
                               overwrite=True, progress=False)
            overrides, family = student_overrides(args.student_spec, shape, args.batch, args.steps, "cpu")
            trainer = make_trainer(features, family, [*overrides, "data.loader_workers=0"], work / f"student-{name}",
                                   "cpu", logits=logits)
            store = trainer.store
            sampler = ChunkAwareSampler(len(store), store.chunk_clips, indices=store.select("all"),
                                        window_chunks=WINDOW_CHUNKS, seed=1)
            epochs = {w: LoaderEpochs(StepLoader(StreamingDataset(features, fresh_plan(trainer), seed=1, rank=0),
                                                 workers=w, prefetch=2), sampler, args.loader_batch) for w in workers}
            shares: list[float] = []
            variants = {"student step": lambda: timed_epoch(trainer, args.steps, shares)}
            variants.update({f"loader, {w} workers": epochs[w] for w in workers})
            print(f"\n{name}: {args.student} student with cached logits (3 views), batch {args.batch}, "
                  f"{args.steps} steps; loader epochs of {len(sampler)} clips in steps of {args.loader_batch}")
            times = alternate(variants, args.rounds)
            for loader in epochs.values():
                loader.loader.close()
            results.timings(f"seconds: student step (batch {args.batch}) and loader epochs "
                            f"({len(sampler)} clips), {name}", times)
            step = times["student step"]
            data = [share * seconds for share, seconds in zip(shares[-args.rounds:], step)]
            results.ratio(f"data_share_of_step/{name}",
                          f"data time / paper-pair student step ({args.student}, cached logits, 3 views), {name}, "
                          f"batch {args.batch}, cpu", data, step, goal=("<=", 0.05),
                          why_not="the data share is measured on the CPU step; see the notes for the loader's own rate")
            rates = {}
            for w in workers:
                seconds = times[f"loader, {w} workers"]
                clips, shipped = epochs[w].clips[-args.rounds:], epochs[w].bytes[-args.rounds:]
                rates[w] = {"clips_s": [c / s for c, s in zip(clips, seconds)],
                            "mb_s": [b / s / 1e6 for b, s in zip(shipped, seconds)]}
                results.note(f"{name} loader, {w} workers: median {np.median(rates[w]['clips_s']):.0f} clips/s, "
                             f"{np.median(rates[w]['mb_s']):.0f} MB/s of float16 rows (min {min(rates[w]['clips_s']):.0f}, "
                             f"max {max(rates[w]['clips_s']):.0f} clips/s)")
            if 0 in workers and max(workers) > 0:
                most = max(workers)
                results.ratio(f"loader_{most}_vs_0_workers/{name}", f"loader epoch, {most} workers / 0 workers, {name}",
                              times[f"loader, {most} workers"], times["loader, 0 workers"], headline=False)
            estimate(results, name, shape, rates, shares[-args.rounds:], step, args.batch)
    return results.finish(args.json)


def fresh_plan(trainer):
    """The trainer's CPU half without its open handles: it opens its own, through the dataset's cache."""
    plan = trainer.teacher.plan()
    plan.close()
    return plan


def estimate(results: Results, name: str, shape: tuple[int, int], rates: dict[int, dict[str, list[float]]],
             shares: list[float], step: list[float], batch: int) -> None:
    """Notes: the data time per clip of the student step, and the clips/s the loader could feed a GPU."""
    clip_mb = shape[0] * shape[1] * 2 / 1e6
    best = max(rates, key=lambda w: np.median(rates[w]["clips_s"]))
    per_worker = max((np.median(r["clips_s"]) / max(w, 1) for w, r in rates.items()), default=0.0)
    mb_s = np.median(rates[best]["mb_s"])
    data_ms = 1e3 * float(np.median([s * t for s, t in zip(shares, step)])) / batch
    results.note(f"{name}: student-step data time {data_ms:.1f} ms per clip (data share median "
                 f"{100 * float(np.median(shares)):.1f} %)")
    results.note(f"{name}: GPU feed estimate: {np.median(rates[best]['clips_s']):.0f} clips/s measured here "
                 f"({best} workers, {mb_s:.0f} MB/s, {clip_mb:.2f} MB a clip as float16); about "
                 f"{per_worker:.0f} clips/s per worker core, so {GPU_HOST_WORKERS} workers on a GPU host "
                 f"≈ {GPU_HOST_WORKERS * per_worker:.0f} clips/s (if the cores and the disk keep up: "
                 f"{GPU_HOST_WORKERS * per_worker * clip_mb:.0f} MB/s of rows)")


if __name__ == "__main__":
    main()
