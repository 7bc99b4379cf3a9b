"""The teacher-logits stage against a plain forward loop over the same clips (its overhead).

For each shape: demo clips as long as the shape's frames, their feature store, and a randomly
initialised teacher checkpoint (default AST base384). Alternated, each producing the clean-view logits
of every clip with one torch thread:
- a plain loop in this process: load the checkpoint, read the rows, normalise, forward in batches;
- the stage in this process (`--scheduler synchronous`): provenance, checkpoint hash, store writes;
- the stage on a new LocalCluster of 1 worker, as `cmkd-pipe teacher-logits` runs alone (cluster
  start, worker imports and the teacher's load are all inside);
- the stage on a warm 1-worker cluster, as the stages of one `cmkd-pipe run` share one (the worker
  keeps the teacher loaded between runs of the same checkpoint).

    python -m benchmarks.teacher_logits [--quick] [--teacher ast-base384] [--shapes 128x1024] [--clips 12]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks.paired import Results, add_arguments, alternate, demo_features, finish_arguments, random_checkpoint, \
    shape_name
from cmkd_pipe.pipeline.config import Normalization
from cmkd_pipe.pipeline.features import normalize
from cmkd_pipe.pipeline.models.checkpoint import load_checkpoint
from cmkd_pipe.pipeline.parallel import SYNCHRONOUS, local_cluster
from cmkd_pipe.pipeline.stores.feature_store import FeatureStore
from cmkd_pipe.stages.teacher_logits import run_teacher_logits

BATCH = 32  # the stage's default batch size


def plain_loop(features: Path, checkpoint: Path, out: Path) -> None:
    """Teacher logits of every clip, written as one .npy: what one would write without the pipeline."""
    model, meta = load_checkpoint(checkpoint)
    model.eval()
    norm = Normalization.from_dict(meta["normalization"])
    store = FeatureStore(features)
    logits = np.empty((len(store), store.n_classes), dtype=np.float32)
    with torch.no_grad():
        for start in range(0, len(store), BATCH):
            rows = np.arange(start, min(start + BATCH, len(store)))
            logits[rows] = model(normalize(torch.from_numpy(store.read(rows, np.float32)), norm)).numpy()
    np.save(out, logits)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--clips-per-class", type=int, default=1, help="demo clips per class, 12 classes (default 1)")
    parser.add_argument("--work-dir", type=Path, help="default: a temporary folder")
    args = finish_arguments(parser.parse_args(argv))
    results = Results("teacher_logits", args, models=("teacher",))
    with tempfile.TemporaryDirectory() as tmp, local_cluster(1) as warm:
        work = args.work_dir or Path(tmp)
        for shape in args.shape_list:
            name = shape_name(shape)
            features = demo_features(work, shape, args.clips_per_class)
            checkpoint = random_checkpoint(work / f"teacher-{name}.pt", args.teacher_spec, features)
            clips = len(FeatureStore(features))

            def stage(**where) -> None:
                run_teacher_logits(features, checkpoint, work / f"logits-{name}.zarr", views=1, device="cpu",
                                   overwrite=True, progress=False, **where)

            print(f"\n{name}: {clips} clips, teacher {args.teacher}")
            times = alternate({"plain loop": lambda: plain_loop(features, checkpoint, work / "plain.npy"),
                               "stage, in process": lambda: stage(scheduler=SYNCHRONOUS),
                               "stage, new 1-worker cluster": lambda: stage(n_workers=1),
                               "stage, warm 1-worker cluster": lambda: stage(scheduler=warm.scheduler_address)},
                              args.rounds, warmup=0)
            results.timings(f"teacher logits of {clips} clips, {name}", times)
            plain, new = times["plain loop"], times["stage, new 1-worker cluster"]
            label = f"teacher-logits stage / plain loop, {args.teacher} {name}, {clips} clips"
            start_up = statistics.median(a - b for a, b in zip(new, plain))
            results.ratio(f"stage_vs_loop/cluster/{name}", f"{label}, new 1-worker cluster", new, plain,
                          goal=("<=", 1.15), why_not=f"a new cluster (worker start, imports, teardown) adds about "
                          f"{start_up:.0f} s to {statistics.median(plain):.0f} s of forwards over {clips} clips: it "
                          "amortises over a real corpus, and `cmkd-pipe run` shares one warm cluster (next row)")
            results.ratio(f"stage_vs_loop/warm/{name}", f"{label}, warm 1-worker cluster",
                          times["stage, warm 1-worker cluster"], plain, goal=("<=", 1.15))
            results.ratio(f"stage_vs_loop/in_process/{name}", f"{label}, in process", times["stage, in process"],
                          plain, headline=False)
    results.note("no warm-up round: every variant loads its teacher in every round, except the warm cluster's "
                 "worker, which keeps it from its first round on (as in `cmkd-pipe run`)")
    return results.finish(args.json)


if __name__ == "__main__":
    main()
