"""KD benchmark on the built-in demo corpus with the demo preset's models (its small CNN, tiny AST).

1. Student training step time (median ms/step) for both directions, AST teacher → CNN student and CNN → AST:
   plain supervised (no teacher), KD from cached teacher logits with 1 view and with 3 views (the
   student replays a teacher view for 2 of 3 clips), and KD with an online frozen teacher. "prep"
   is the share of the step spent before the student's forward pass: waiting for the batch,
   augmentation, view replay, and the online teacher's forward pass. With --device cuda every mode is
   timed in fp32 and in bf16 autocast (train.amp=true).
2. Teacher-logits stage throughput (clips/s, 1 view) for both teachers on a warm Dask LocalCluster on
   the CPU (1 and 2 workers, one torch thread each) and, with --device cuda, on the GPU (1 worker, bf16).

Teachers are randomly initialised: the timings do not depend on the weights.

    .venv/bin/python -m benchmarks.kd [--steps 6] [--clips-per-class 20] [--threads N] [--device cuda]
"""
from __future__ import annotations

import argparse
import itertools
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch

from cmkd_pipe.data_manifests.demo import make_demo_corpus
from cmkd_pipe.pipeline.config import FeatureConfig
from cmkd_pipe.pipeline.predict import autocast_for
from cmkd_pipe.pipeline.training.batches import batches
from cmkd_pipe.pipeline.training.distributed import DistInfo
from cmkd_pipe.pipeline.training.engine import Trainer, TrainRequest
from cmkd_pipe.pipeline.models.registry import configured_families
from cmkd_pipe.pipeline.training.presets import resolve_config
from cmkd_pipe.pipeline.training.setup import build_trainer
from cmkd_pipe.stages.features import run_features
from cmkd_pipe.stages.teacher_logits import run_teacher_logits


def make_trainer(features: Path, arch: str, out: Path, device: str, overrides: list[str],
                 logits: Path | None = None, teacher: Path | None = None) -> Trainer:
    request = TrainRequest(features=features, arch=arch, config=resolve_config("demo", overrides), out_dir=out,
                           teacher_logits=logits, teacher_checkpoint=teacher, device=device, progress=False)
    return build_trainer(request, DistInfo(0, 1, torch.device(device)))


def step_ms(trainer: Trainer, steps: int) -> tuple[float, float]:
    """(median ms per training step, share of the time before the student's forward); the first step is
    a warm-up."""
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    trainer.model.train()
    order = trainer.sampler.rank_order()[: (steps + 1) * trainer.batch_size]
    prep, total = [], []
    tick = time.perf_counter()
    for step, batch in enumerate(batches(trainer.store, order, trainer.batch_size, drop_last=True)):
        x, y, teacher_p = trainer.prepare(batch, step)
        sync()
        ready = time.perf_counter()
        with autocast_for(trainer.device, trainer.amp):
            logits = trainer.model(x)
        loss, _ = trainer.loss(logits.float(), y, teacher_p)
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        trainer.optimizer.step()
        sync()
        if step > 0:
            prep.append(ready - tick)
            total.append(time.perf_counter() - tick)
        tick = time.perf_counter()
    return 1000 * statistics.median(total), sum(prep) / sum(total)


def local_cluster(workers: int):
    from distributed import LocalCluster

    return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                        silence_logs=logging.ERROR)


def logits_rate(features: Path, checkpoint: Path, out: Path, device: str, workers: int) -> float:
    """Clips/s of the teacher-logits stage (1 view) on a warm LocalCluster of `workers` processes."""
    with local_cluster(workers) as cluster:
        def run() -> dict:
            return run_teacher_logits(features, checkpoint, out, views=1, device=device,
                                      scheduler=cluster.scheduler_address, overwrite=True, progress=False)

        run()  # warm-up: worker imports, model load
        return run()["clips_per_second"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=6, help="timed training steps per mode")
    parser.add_argument("--clips-per-class", type=int, default=20, help="demo corpus size (12 classes)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the training process")
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a temporary folder")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        manifest = make_demo_corpus(work / "demo", clips_per_class=args.clips_per_class)
        preset = resolve_config("demo")
        families = configured_families(preset)
        features = work / "features.zarr"
        batch = preset["data"]["batch_size"]
        base = [f"data.epoch_len={(args.steps + 1) * batch}"]
        checkpoints, stores, built = {}, {}, {}
        with local_cluster(2) as cluster:
            run_features(work / "demo" / "manifest", features, config=FeatureConfig(**preset["features"]),
                         chunk_clips=32, scheduler=cluster.scheduler_address, overwrite=True, progress=False)
            for arch in families:  # random teachers and their cached logits (1 and 3 views)
                checkpoints[arch] = work / f"teacher-{arch}.pt"
                model = make_trainer(features, arch, work / f"teacher-{arch}", "cpu", base)
                model.save_model(checkpoints[arch])
                built[arch] = model.arch
                for views in (1, 3):
                    stores[arch, views] = work / f"logits-{arch}-{views}.zarr"
                    run_teacher_logits(features, checkpoints[arch], stores[arch, views], views=views, freq_mask=12,
                                       time_mask=40, mixup_rate=0.5, device="cpu",
                                       scheduler=cluster.scheduler_address, overwrite=True, progress=False)

        precisions = ["fp32", "bf16"] if args.device.startswith("cuda") else ["fp32"]
        print(f"demo corpus: {len(manifest)} clips; store {preset['features']['target_frames']} frames x "
              f"{preset['features']['num_mel_bins']} bins; batch {batch}; {args.steps} timed steps; "
              f"device {args.device}; {torch.get_num_threads()} torch threads; "
              + ", ".join(f"{family} = {arch}" for family, arch in built.items()))
        print(f"\n{'teacher → student':18s} {'mode':22s} {'precision':9s} {'ms/step':>9s} {'prep':>6s} "
              f"{'vs plain':>9s}")
        for teacher, student in itertools.permutations(families, 2):
            modes = [("plain (no teacher)", {}), ("cached logits, 1 view", {"logits": stores[teacher, 1]}),
                     ("cached logits, 3 views", {"logits": stores[teacher, 3]}),
                     ("online teacher", {"teacher": checkpoints[teacher]})]
            for precision in precisions:
                plain = None
                for name, source in modes:
                    overrides = [*base, f"train.amp={precision == 'bf16'}"]
                    trainer = make_trainer(features, student, work / "student", args.device, overrides, **source)
                    ms, prep = step_ms(trainer, args.steps)
                    plain = plain or ms
                    print(f"{teacher + ' → ' + student:18s} {name:22s} {precision:9s} {ms:9.1f} {prep:6.1%} "
                          f"{ms / plain:8.2f}x")

        print(f"\nteacher-logits stage ({len(manifest)} clips, 1 view, warm cluster)   clips/s")
        targets = [("cpu", 1), ("cpu", 2)] + ([(args.device, 1)] if args.device.startswith("cuda") else [])
        for arch in families:
            for device, workers in targets:
                rate = logits_rate(features, checkpoints[arch], work / "throughput.zarr", device, workers)
                print(f"  {arch:4s} teacher, {device}, {workers} worker(s){'':14s} {rate:8.1f}")


if __name__ == "__main__":
    main()
