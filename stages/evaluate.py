"""Evaluation stage: a trained checkpoint scored on a split of a feature store.

Inputs:  a model checkpoint (pipeline/models/checkpoint.py) and a complete feature store.
Outputs: a metrics dict (and OUT json when asked): accuracy; mAP, mAUC, d′ and per-class AP for
         multi-label data; classes without positives excluded and counted.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from pipeline.config import Normalization
from pipeline.metrics import summarize
from pipeline.models.checkpoint import check_compatible, load_checkpoint
from pipeline.predict import predict_probs
from pipeline.records import write_json_atomic
from pipeline.stores.feature_store import FeatureStore
from pipeline.training.batches import batches


def evaluate_checkpoint(checkpoint: str | os.PathLike, features: str | os.PathLike, split: str = "all", *,
                        batch_size: int = 64, device: str | None = None,
                        out: str | os.PathLike | None = None) -> dict[str, Any]:
    """Metrics of `checkpoint` on the clips of `features` selected by `split` (e.g. 'eval', 'fold==1')."""
    store = FeatureStore(features)
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, meta = load_checkpoint(checkpoint, map_location=target)
    check_compatible(meta, store.feature_config.to_dict(), store.vocabulary)
    norm = Normalization.from_dict(meta["normalization"])
    rows = store.select(split)
    scores = predict_probs(model.to(target), batches(store, rows, batch_size), store.multilabel, norm=norm,
                           device=target, n_classes=store.n_classes, amp=False)
    result = {"checkpoint": str(checkpoint), "features": str(features), "split": split, "n_clips": int(len(rows)),
              **summarize(scores, store.targets[rows], store.multilabel)}
    if out is not None:
        write_json_atomic(Path(out), result)
    return result
