"""Inference: a model's logits and class probabilities on batches of stored features.

One place turns logits into probabilities (softmax single-label, sigmoid multi-label); the training
engine, the evaluate stage and the teacher-logits stage all run models through here.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from cmkd_pipe.pipeline.config import Normalization
from cmkd_pipe.pipeline.features import normalize
from cmkd_pipe.pipeline.stores.chunk_cache import ChunkCache
from cmkd_pipe.pipeline.stores.feature_store import FeatureStore


def probabilities(logits: torch.Tensor | np.ndarray, multilabel: bool) -> Any:
    """ψ(logits): sigmoid for multi-label, softmax over the last axis otherwise; numpy in, numpy out."""
    if isinstance(logits, np.ndarray):
        return probabilities(torch.from_numpy(np.asarray(logits, dtype=np.float32)), multilabel).numpy()
    logits = logits.float()
    return torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=-1)


def autocast_for(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on CUDA when enabled; a no-op elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(x: np.ndarray | torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A raw fbank batch on `device` as float32: copied as stored (float16 from a feature store, half the
    bytes of float32) and cast there."""
    tensor = torch.from_numpy(x) if isinstance(x, np.ndarray) else x
    return tensor.to(device, non_blocking=True).float()


@torch.no_grad()
def model_logits(model: nn.Module, x: torch.Tensor, amp: bool = True) -> torch.Tensor:
    """Float32 logits of `model` on a normalised input batch (no gradients; bf16 autocast on CUDA)."""
    with autocast_for(x.device, amp):
        return model(x).float()


def row_batches(store: FeatureStore, rows: np.ndarray, batch_size: int,
                cache: ChunkCache | None = None) -> Iterator[np.ndarray]:
    """Raw fbank batches [B, T, F] of store `rows` in order, as stored (float16): through `cache` (e.g. a
    training's resident cache), else `FeatureStore.read` (every chunk decoded once per batch)."""
    rows = np.asarray(rows, dtype=np.int64)
    for start in range(0, len(rows), batch_size):
        part = rows[start:start + batch_size]
        yield cache.rows(part) if cache is not None else store.read(part)


@torch.no_grad()
def predict_probs(model: nn.Module, batches: Iterable[np.ndarray], multilabel: bool, *, norm: Normalization,
                  device: torch.device, n_classes: int, amp: bool = True) -> np.ndarray:
    """Class probabilities [N, K] of `model` (put in eval mode) on raw-fbank batches [B, T, F] (e.g.
    `row_batches`), normalised with `norm`."""
    model.eval()
    scores = [probabilities(model_logits(model, normalize(to_device(x, device), norm), amp), multilabel).cpu()
              for x in batches]
    return torch.cat(scores).numpy() if scores else np.zeros((0, n_classes), np.float32)
