"""Evaluation stage: a trained checkpoint scored on a split of a feature store.

Inputs:  a model checkpoint (pipeline/models/checkpoint.py) and a complete feature store.
Outputs: a metrics dict (and OUT json when asked): accuracy; mAP, mAUC, d′ and per-class AP for
         multi-label data; classes without positives excluded and counted. An imported teacher with a
         label map is scored on the corpus classes it maps (`mapped_classes`; single-label: on the
         clips of those classes).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from cmkd_pipe.pipeline.config import Normalization
from cmkd_pipe.pipeline.metrics import summarize
from cmkd_pipe.pipeline.models.checkpoint import check_compatible, load_checkpoint
from cmkd_pipe.pipeline.predict import predict_probs, row_batches
from cmkd_pipe.pipeline.records import write_json_atomic
from cmkd_pipe.pipeline.stores.feature_store import FeatureStore


def evaluate_checkpoint(checkpoint: str | os.PathLike, features: str | os.PathLike, split: str = "all", *,
                        batch_size: int = 64, device: str | None = None,
                        out: str | os.PathLike | None = None) -> dict[str, Any]:
    """Metrics of `checkpoint` on the clips of `features` selected by `split` (e.g. 'eval', 'fold==1')."""
    store = FeatureStore(features)
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, meta = load_checkpoint(checkpoint, map_location=target)
    label_map = check_compatible(meta, store.feature_config.to_dict(), store.vocabulary)
    norm = Normalization.from_dict(meta["normalization"])
    rows = store.select(split)
    targets = store.targets
    extra: dict[str, Any] = {}
    if label_map is not None:
        targets = targets[:, list(label_map.corpus_classes)]
        if not store.multilabel:  # only clips of a class the teacher scores
            rows = rows[targets[rows].any(axis=1)]
        extra["mapped_classes"] = len(label_map.corpus_classes)
    scores = predict_probs(model.to(target), row_batches(store, rows, batch_size), store.multilabel, norm=norm,
                           device=target, n_classes=model.n_classes, amp=False)
    if label_map is not None:
        scores = scores[:, list(label_map.teacher_columns)]
    result = {"checkpoint": str(checkpoint), "features": str(features), "split": split, "n_clips": int(len(rows)),
              **extra, **summarize(scores, targets[rows], store.multilabel)}
    if out is not None:
        write_json_atomic(Path(out), result)
    return result
