"""Cross-validation stage: one training run per fold (ESC-50 style), then mean ± std over folds.

Inputs:  a complete feature store with folds; a preset.
Outputs: OUT/fold-K/ (one training run folder per fold) and OUT/cv.json.
Resume:  a fold with results.json is kept; an interrupted fold resumes from its last state.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.records import write_json_atomic
from stages.train import train

AGGREGATES = ("last", "best", "wa", "ensemble")


def fold_overrides(fold: int) -> list[str]:
    """Train on every other fold, validate and test on `fold` (the AST ESC-50 protocol)."""
    return [f"data.train=fold!={fold}", f"data.val=fold=={fold}", f"data.test=fold=={fold}"]


def run_cv(features: str | os.PathLike, arch: str, out: str | os.PathLike, *, folds: list[int], preset: str,
           overrides: list[str] | None = None, progress: bool = True, **train_options: Any) -> dict[str, Any]:
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
    """Mean ± std (population, as AST reports fold averages) of the main metric per aggregate."""
    first = next(iter(per_fold.values()))
    metric = first["metric"]
    summary: dict[str, Any] = {"metric": metric, "folds": sorted(per_fold)}
    for name in AGGREGATES:
        values = [r[name][metric] for r in per_fold.values() if name in r and r[name].get(metric) is not None]
        if values:
            summary[name] = {"mean": float(np.mean(values)), "std": float(np.std(values)), "per_fold": values}
    return summary
