"""Student training step: plain, with cached teacher logits (1 and 3 views), and with an online teacher.

For each shape: demo clips as long as the shape's frames and their feature store. The student (default
EfficientNet-B2) is trained by the engine itself (`Trainer.train_epoch`: batches, augmentation, view
replay, teacher targets, loss, optimiser step) for --steps steps of --batch clips per variant and round,
the variants alternated:
- plain (no teacher);
- cached logits, 1 view (the clean view; the student's own augmentation) and 3 views (each clip draws a
  cached view and replays the teacher's exact input);
- an online teacher (default AST base384) whose forward runs inside every step.
Cached logits are written by a tiny teacher: a cached step's cost does not depend on which teacher wrote
them (only on the classes and views). ms/step is the epoch's seconds over its steps; "data" is the
engine's data fraction (getting the batch ready, augmentation, view replay; the online teacher's forward).

    python -m benchmarks.kd [--quick] [--teacher ast-base384] [--student efficientnet-b2]
                            [--shapes 128x512,128x1024] [--steps 2] [--batch 2] [--device cpu]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from benchmarks.paired import (MODELS, Results, Seconds, add_arguments, alternate, demo_features, finish_arguments,
                               random_checkpoint, shape_name)
from cmkd_pipe.pipeline.models.registry import family_of_arch
from cmkd_pipe.pipeline.parallel import SYNCHRONOUS
from cmkd_pipe.pipeline.training.distributed import DistInfo
from cmkd_pipe.pipeline.training.engine import Trainer, TrainRequest
from cmkd_pipe.pipeline.training.presets import resolve_config
from cmkd_pipe.pipeline.training.setup import build_trainer
from cmkd_pipe.stages.teacher_logits import run_teacher_logits

VIEWS = {"freq_mask": 24, "time_mask": 96, "mixup_rate": 0.5}  # the 3-view store's augmentation


def student_overrides(spec: dict, shape: tuple[int, int], batch: int, steps: int,
                      device: str) -> tuple[list[str], str]:
    """(--set overrides that turn the demo preset into this benchmark's run: the student's model section,
    the shape, every clip in every split, one epoch of `steps` steps; the student's family)."""
    family = family_of_arch(spec["arch"]).name
    return [*(f"model.{family}.{key}={value}" for key, value in spec.items()),
            f"features.num_mel_bins={shape[0]}", f"features.target_frames={shape[1]}",
            "data.train=all", "data.val=all", "data.test=all", f"data.batch_size={batch}",
            f"data.epoch_len={steps * batch}", "train.epochs=1", "average.wa_start_epoch=null",
            "average.wa_end_epoch=null", f"train.amp={device.startswith('cuda')}"], family


def make_trainer(features: Path, family: str, overrides: list[str], out: Path, device: str,
                 logits: Path | None = None, teacher: Path | None = None) -> Trainer:
    request = TrainRequest(features=features, arch=family, config=resolve_config("demo", overrides), out_dir=out,
                           teacher_logits=logits, teacher_checkpoint=teacher, device=device, progress=False)
    return build_trainer(request, DistInfo(0, 1, torch.device(device)))


def timed_epoch(trainer: Trainer, steps: int, shares: list[float]) -> Seconds:
    """One epoch of the engine's loop: seconds per step (its data fraction goes to `shares`)."""
    if trainer.device.type == "cuda":
        torch.cuda.synchronize(trainer.device)
    out = trainer.train_epoch()
    shares.append(out["data_fraction"])
    return Seconds(out["epoch_seconds"] / steps)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--steps", type=int, default=2, help="training steps per variant and round")
    parser.add_argument("--batch", type=int, default=2, help="clips per step")
    parser.add_argument("--clips-per-class", type=int, default=1, help="demo clips per class, 12 classes")
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--work-dir", type=Path, help="default: a temporary folder")
    args = finish_arguments(parser.parse_args(argv))
    results = Results("kd", args)
    gpu = args.device.startswith("cuda")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        for shape in args.shape_list:
            name = shape_name(shape)
            features = demo_features(work, shape, args.clips_per_class)
            teacher = random_checkpoint(work / f"teacher-{name}.pt", args.teacher_spec, features)
            tiny = random_checkpoint(work / f"tiny-{name}.pt", MODELS["ast-tiny"], features)
            stores = {}
            for views in (1, 3):
                stores[views] = work / f"logits-{name}-{views}.zarr"
                run_teacher_logits(features, tiny, stores[views], views=views, **VIEWS, scheduler=SYNCHRONOUS,
                                   device=args.device, overwrite=True, progress=False)
            overrides, family = student_overrides(args.student_spec, shape, args.batch, args.steps, args.device)
            sources = {"plain": {}, "cached, 1 view": {"logits": stores[1]}, "cached, 3 views": {"logits": stores[3]},
                       "online teacher": {"teacher": teacher}}
            trainers = {mode: make_trainer(features, family, overrides, work / f"student-{k}", args.device, **source)
                        for k, (mode, source) in enumerate(sources.items())}
            shares: dict[str, list[float]] = {mode: [] for mode in trainers}
            print(f"\n{name}: {args.student} student, batch {args.batch}, {args.steps} steps per round, "
                  f"{args.device}; online teacher {args.teacher}")
            times = alternate({mode: (lambda t=trainer, s=shares[mode]: timed_epoch(t, args.steps, s))
                               for mode, trainer in trainers.items()}, args.rounds)
            results.timings(f"seconds per training step, {name}, batch {args.batch}", times)
            for mode, values in shares.items():
                timed = values[-args.rounds:]  # the warm-up round left out
                results.note(f"{name} {mode}: data share of the step {min(timed):.1%}-{max(timed):.1%}")
            plain = times["plain"]
            pair = f"{args.student} <- {args.teacher} {name}, batch {args.batch}, {args.device}"
            results.ratio(f"step_cached1_vs_plain/{name}", f"cached-logit step (1 view) / plain step, {pair}",
                          times["cached, 1 view"], plain, goal=("<=", 1.05))
            results.ratio(f"step_cached3_vs_plain/{name}", f"cached-logit step (3 views) / plain step, {pair}",
                          times["cached, 3 views"], plain, goal=("<=", 1.05))
            results.ratio(f"step_online_vs_cached/{name}", f"online-teacher step / cached step (1 view), {pair}",
                          times["online teacher"], times["cached, 1 view"], goal=(">=", 2.0) if gpu else None)
    if not gpu:
        results.note("online vs cached: the goal (>= 2x) is for a GPU; on the CPU the ratio is reported only")
    return results.finish(args.json)


if __name__ == "__main__":
    main()
