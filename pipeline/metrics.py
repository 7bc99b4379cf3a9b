"""Evaluation metrics with the meaning AST/PSLA give them (`src/utilities/stats.py` there), vectorised.

Per-class average precision and ROC AUC equal scikit-learn's `average_precision_score` and
`roc_auc_score` (tied scores grouped into one threshold); mAP and mAUC are their means over the
classes where they are defined, and d′ is computed from mAUC, as AST's training loop does.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np


def _check(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(
            f"metrics: scores {scores.shape} and targets {targets.shape} must both be [clips, classes]"
        )
    if scores.shape[0] == 0:
        raise ValueError("metrics: no clips to score")
    if not np.isfinite(scores).all():
        raise ValueError("metrics: scores contain NaN or infinity; check the model outputs")
    return scores, targets


def _binary(targets: np.ndarray) -> np.ndarray:
    if not np.isin(targets, (0.0, 1.0)).all():
        raise ValueError("metrics: AP/AUC need 0/1 targets; pass the clean multi-hot labels, not mixed ones")
    return targets.astype(bool)


def accuracy(scores: np.ndarray, targets: np.ndarray) -> float:
    """Fraction of clips whose top-scored class is the top target class (multi-hot or soft targets)."""
    scores, targets = _check(scores, targets)
    return float(np.mean(scores.argmax(axis=1) == targets.argmax(axis=1)))


def average_precision(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-class AP [C] (sklearn's step-wise definition); NaN for a class without positives."""
    scores, targets = _check(scores, targets)
    positive = _binary(targets)
    n = scores.shape[0]
    order = np.argsort(-scores, axis=0, kind="stable")
    sorted_scores = np.take_along_axis(scores, order, axis=0)
    sorted_pos = np.take_along_axis(positive, order, axis=0)
    true_pos = np.cumsum(sorted_pos, axis=0)
    # A threshold sits at the last row of each run of tied scores; every row takes the precision
    # of the threshold that ends its run.
    run_end = np.ones_like(sorted_pos)
    run_end[:-1] = sorted_scores[1:] != sorted_scores[:-1]
    rows = np.arange(n)[:, None]
    end_row = np.where(run_end, rows, n - 1)
    end_row = np.flip(np.minimum.accumulate(np.flip(end_row, axis=0), axis=0), axis=0)
    precision_at_end = np.take_along_axis(true_pos, end_row, axis=0) / (end_row + 1)
    n_pos = true_pos[-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (sorted_pos * precision_at_end).sum(axis=0) / n_pos
    return np.where(n_pos > 0, ap, np.nan)


def roc_auc(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-class ROC AUC [C] (Mann-Whitney with average ranks for ties, as sklearn's trapezoid);
    NaN for a class without positives or without negatives."""
    from scipy import stats  # here, not at import: scipy.stats costs ~1 s of every training's start-up

    scores, targets = _check(scores, targets)
    positive = _binary(targets)
    ranks = stats.rankdata(scores, method="average", axis=0)
    n_pos = positive.sum(axis=0).astype(np.float64)
    n_neg = scores.shape[0] - n_pos
    rank_sum = (ranks * positive).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def d_prime(auc: float | np.ndarray) -> float | np.ndarray:
    """Sensitivity index d′ = √2 · Φ⁻¹(AUC)."""
    from scipy.special import ndtri  # Φ⁻¹

    return math.sqrt(2.0) * ndtri(auc)


def _json_float(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def summarize(scores: np.ndarray, targets: np.ndarray, multilabel: bool) -> dict[str, Any]:
    """JSON-ready summary: accuracy always; mAP, mAUC, d′ and per-class AP for multi-label data.

    Classes without positives are left out of the means and counted; undefined or infinite values
    (no class with positives, AUC of exactly 0 or 1 making d′ infinite) are reported as None.
    """
    result: dict[str, Any] = {"accuracy": accuracy(scores, targets)}
    if not multilabel:
        return result
    ap = average_precision(scores, targets)
    auc = roc_auc(scores, targets)
    defined_ap, defined_auc = ap[~np.isnan(ap)], auc[~np.isnan(auc)]
    m_ap = float(defined_ap.mean()) if defined_ap.size else math.nan
    m_auc = float(defined_auc.mean()) if defined_auc.size else math.nan
    result.update(
        mAP=_json_float(m_ap),
        mAUC=_json_float(m_auc),
        d_prime=_json_float(d_prime(m_auc)),
        per_class_ap=[_json_float(v) for v in ap],
        n_classes_without_positives=int(np.isnan(ap).sum()),
    )
    return result
