"""Training stage: a model trained on a feature store (teachers, baselines, and KD students).

Inputs:  a complete feature store; optionally a logits store (--logits) or a teacher checkpoint (--teacher).
Outputs: OUT/ with config.yaml, final.pt (the exported model: wa.pt when weight averaging ran, else the
         last epoch's weights), best.pt, wa.pt, results.json, test_predictions.npz (rows, clip_ids,
         scores, targets; a student's teacher_scores, and teacher_classes when its teacher scores only
         those corpus classes), metrics.jsonl/.csv,
         tensorboard/, curves.png, checkpoints/last.pt (resume state).
Resume:  --resume continues from checkpoints/last.pt exactly (model, optimiser, scheduler, sampler; the
         augmentation and dropout draws are functions of seed, epoch, step and rank).
Launch under torchrun for DDP (one process per device): every rank trains, rank 0 writes.
"""
from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path
from typing import Any

from cmkd_pipe.pipeline.config import dump_config
from cmkd_pipe.pipeline.metrics import summarize
from cmkd_pipe.pipeline.records import copy_atomic, save_npz_atomic, write_json_atomic, write_text_atomic
from cmkd_pipe.pipeline.training.distributed import barrier, init_distributed, shutdown
from cmkd_pipe.pipeline.models.checkpoint import read_checkpoint
from cmkd_pipe.pipeline.models.registry import family_of_arch
from cmkd_pipe.pipeline.training.engine import FitOutcome, Trainer, TrainRequest, wa_range
from cmkd_pipe.pipeline.training.logs import RunLogger
from cmkd_pipe.pipeline.training.presets import resolve_config
from cmkd_pipe.pipeline.training.setup import build_trainer


def train(features: str | os.PathLike, arch: str, out: str | os.PathLike, *, preset: str = "demo",
          overrides: list[str] | None = None, config: dict[str, Any] | None = None, resume: bool = False,
          weights: str | None = None, new_head: bool = False, logits: str | None = None, teacher: str | None = None,
          device: str | None = None, allow_download: bool = False, progress: bool = True,
          extra: dict[str, Any] | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Train with `config` (a resolved config, as the stage graph writes it) or else the preset with dotted
    overrides, and write the run folder; return results.json's content. An existing run folder is continued
    (`resume`), started again (`overwrite`: its run files are deleted first) or refused."""
    family_of_arch(arch)  # an unknown --model fails before the preset is read
    if config is None:
        config = resolve_config(preset, overrides or [])
    prepare_run_folder(Path(out), resume=resume, overwrite=overwrite)
    request = TrainRequest(features=Path(features), arch=arch, config=config, out_dir=Path(out), resume=resume,
                           weights=Path(weights) if weights else None, new_head=new_head,
                           teacher_logits=Path(logits) if logits else None,
                           teacher_checkpoint=Path(teacher) if teacher else None, device=device,
                           allow_download=allow_download, progress=progress,
                           extra={"preset": preset, **(extra or {})})
    return run_training(request)


def best_test_metrics(trainer: Trainer, outcome: FitOutcome) -> dict[str, Any]:
    """Test metrics of the best validation epoch: recorded in that epoch when the test split was scored
    every epoch, else scored now from best.pt (empty when no epoch was best, e.g. a metric that is None)."""
    if outcome.best.get("test") is not None:
        return outcome.best["test"]
    if outcome.best["epoch"] is None:
        return {}
    best = copy.deepcopy(trainer.core)
    best.load_state_dict(read_checkpoint(trainer.best_path())["state_dict"])
    return trainer.evaluate(trainer.splits.test, best)[0]


RUN_FILES = ("checkpoints", "results.json", "final.pt", "best.pt", "wa.pt", "metrics.jsonl", "metrics.csv",
             "test_predictions.npz", "config.yaml", "curves.png", "tensorboard")


def prepare_run_folder(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to train over a file or over an earlier run (unless resuming it or asked to overwrite it);
    `overwrite` deletes only the run's own files, never anything else in the folder."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: is a file, not a run folder; choose another --out")
    found = [name for name in RUN_FILES if (out / name).exists()]
    if not found or resume:
        return
    if not overwrite:
        raise ValueError(f"{out}: already holds a training run ({', '.join(found[:3])}); pass --resume to "
                         "continue it, --overwrite to start it again, or choose another --out")
    for name in found:
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def run_training(request: TrainRequest) -> dict[str, Any]:
    """Train one model (single process or one torchrun rank) into its run folder."""
    info = init_distributed(request.device)
    try:
        trainer = build_trainer(request, info)
        out = trainer.out
        resuming = request.resume and trainer.state_path().is_file()
        logger = None
        if info.is_main:
            out.mkdir(parents=True, exist_ok=True)
            if not resuming:
                write_text_atomic(out / "config.yaml", dump_config(request.config))
            logger = RunLogger(out)
        outcome = trainer.fit(resume=request.resume, logger=logger)
        return write_run_folder(trainer, outcome, logger)
    finally:
        shutdown(info)


def write_run_folder(trainer: Trainer, outcome: FitOutcome, logger: RunLogger | None) -> dict[str, Any]:
    """Weight averaging, the ensemble, final.pt, test_predictions.npz, results.json and curves.png (rank 0
    writes; every rank takes part in the gathered predictions and returns the results)."""
    out, store, test = trainer.out, trainer.store, trainer.splits.test
    last, final_scores = trainer.evaluate(test)  # the last epoch's model (also when test was scored per epoch)
    best = {"epoch": outcome.best["epoch"], **best_test_metrics(trainer, outcome)}
    results: dict[str, Any] = {"arch": trainer.checkpoint_meta["extra"]["arch"], "metric": trainer.metric,
                               "epochs": trainer.epochs, "multilabel": store.multilabel, "n_test": int(len(test)),
                               "last": last, "best": best}
    export = "last"
    if outcome.weight_average.count:
        wa_model = copy.deepcopy(trainer.core)
        wa_model.load_state_dict(outcome.weight_average.average())
        wa_metrics, final_scores = trainer.evaluate(test, wa_model)
        results["wa"] = {"epochs": list(wa_range(trainer.config)), **wa_metrics}
        trainer.save_model(out / "wa.pt", wa_model)
        export = "wa"
    if outcome.ensemble.count:
        results["ensemble"] = summarize(outcome.ensemble.mean(), store.targets[test], store.multilabel)
    results["final"] = export  # every rank returns it (the CLI prints it under torchrun too)
    teacher_scores = trainer.teacher.probabilities(test)  # collective for an online teacher
    if trainer.dist.is_main:
        if export == "wa":
            copy_atomic(out / "wa.pt", out / "final.pt")
        else:
            trainer.save_model(out / "final.pt")
        results["run"] = {"name": out.name, "group": out.parent.name, "role": trainer.teacher.role}
        predictions = {"rows": test, "clip_ids": store.clip_ids[test], "scores": final_scores,
                       "targets": store.targets[test]}
        if teacher_scores is not None:
            results["teacher"] = trainer.teacher.info
            predictions["teacher_scores"] = teacher_scores
            if trainer.teacher.kd_classes is not None:  # its columns: these corpus classes
                predictions["teacher_classes"] = trainer.teacher.kd_classes
        save_npz_atomic(out / "test_predictions.npz", **predictions)
        write_json_atomic(out / "results.json", results)
        if logger:
            logger.plot_curves(out / "curves.png", metric=trainer.metric)
            logger.close()
    barrier(trainer.dist)
    return results
