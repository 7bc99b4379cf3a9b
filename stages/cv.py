"""Cross-validation stage: one training run per fold (ESC-50 style), then mean ± std over folds.

Inputs:  a complete feature store with folds; a preset.
Outputs: OUT/fold-K/ (one training run folder per fold) and OUT/cv.json.
Resume:  a fold with results.json is kept; an interrupted fold resumes from its last state.
The fold runs are made by the train stage's `train` function, passed in by the caller (the CLI): a
stage never imports another stage.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from cmkd_pipe.pipeline.datasets import fold_overrides
from cmkd_pipe.pipeline.records import write_json_atomic
from cmkd_pipe.pipeline.training.engine import TrainRun

AGGREGATES = ("last", "best", "wa", "ensemble")
STD = "sample std (ddof=1) over folds"


def run_cv(train: TrainRun, features: str | os.PathLike, arch: str, out: str | os.PathLike, *, folds: list[int],
           preset: str, overrides: list[str] | None = None, progress: bool = True,
           **train_options: Any) -> dict[str, Any]:
    """One `train` run per fold (train on the others, validate and test on it), then cv.json."""
    out = Path(out)
    per_fold = {}
    for fold in folds:
        fold_dir = out / f"fold-{fold}"
        done = fold_dir / "results.json"
        if done.is_file():
            per_fold[fold] = json.loads(done.read_text())
            continue
        per_fold[fold] = train(features, arch, fold_dir, preset=preset,
                               overrides=[*(overrides or []), *fold_overrides(fold)],
                               resume=True, progress=progress, **train_options)
    summary = summarize_folds(per_fold)
    write_json_atomic(out / "cv.json", summary)
    return summary


def summarize_folds(per_fold: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Mean ± sample std (ddof=1, as the report; None for one fold) of the main metric per aggregate."""
    first = next(iter(per_fold.values()))
    metric = first["metric"]
    summary: dict[str, Any] = {"metric": metric, "folds": sorted(per_fold), "std_kind": STD}
    for name in AGGREGATES:
        values = [r[name][metric] for r in per_fold.values() if name in r and r[name].get(metric) is not None]
        if values:
            std = float(np.std(values, ddof=1)) if len(values) > 1 else None
            summary[name] = {"mean": float(np.mean(values)), "std": std, "per_fold": values}
    return summary
