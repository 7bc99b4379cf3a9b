"""torch.distributed set-up for runs launched by torchrun (one process per device), and plain runs."""
from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from cmkd_pipe.pipeline.config import Normalization
from cmkd_pipe.pipeline.predict import predict_probs, row_batches
from cmkd_pipe.pipeline.stores.chunk_cache import ChunkCache
from cmkd_pipe.pipeline.stores.feature_store import FeatureStore


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the process group torchrun describes (RANK/WORLD_SIZE env), or run as a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    wanted = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if wanted.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda asked for, but no CUDA device is visible")
        torch.cuda.set_device(local_rank)
        target = torch.device("cuda", local_rank)
    else:
        target = torch.device(wanted)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if target.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=dt.timedelta(minutes=30))
    rank = dist.get_rank() if dist.is_initialized() else 0
    return DistInfo(rank, world, target)


def gather_objects(value: Any, info: DistInfo) -> list[Any]:
    """Every rank's `value`, in rank order (a one-item list when not distributed)."""
    if not info.enabled:
        return [value]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, value)
    return out


def predict_rows(model: nn.Module, store: FeatureStore, rows: np.ndarray, info: DistInfo, *, norm: Normalization,
                 batch_size: int, amp: bool = True, cache: ChunkCache | None = None) -> np.ndarray:
    """Class probabilities of `model` on store rows: each rank scores every world_size-th row, and every
    rank gets all of them back in `rows` order (a collective call under DDP)."""
    mine = np.arange(info.rank, len(rows), info.world_size)
    n_outputs = int(getattr(model, "n_classes", store.n_classes))  # an imported teacher may have more
    local = predict_probs(model, row_batches(store, rows[mine], batch_size, cache), store.multilabel, norm=norm,
                          device=info.device, n_classes=n_outputs, amp=amp)
    out = np.zeros((len(rows), n_outputs), dtype=np.float32)
    for index, values in gather_objects((mine, local), info):
        out[index] = values
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
