"""A training epoch's input: whole steps prepared by torch DataLoader workers, finished on the device.

An item of `StepDataset` is one training step (`Step`: epoch, step index, this rank's store rows of the
batch, in the sampler's chunk-local order). Preparing it is the CPU half of the step's input: read the
rows as stored (float16, whole chunks decoded and kept by a resident `ChunkCache`), draw the step's
augmentation (mixup pairs and λ, mask bands, shifts, teacher views) from a generator seeded by
`step_seeds(seed, epoch, step, rank)`, gather the rows it mixes in and the teacher logits, mix the
targets. It is a pure function of (seed, epoch, step, rank), so 0 or N workers, a resumed run and every
DDP rank give the same batches. The result (`StepBatch`) travels as float16 with the recipe of every row;
`StepBatch.to(device)` copies it (`non_blocking`, from pinned memory on CUDA) and the TeacherSource
applies the recipe there, after casting to float32 (pipeline.augment.apply_recipe).

`StepLoader` owns the DataLoader (batch_size=None, one item per step; `data.loader_workers` workers (null:
`AUTO_GPU_WORKERS` with CUDA, none on the CPU, where benchmarks/loader.py measured no gain on 2 cores),
`data.prefetch` steps read ahead per worker, workers kept across epochs, pinned memory on CUDA). Each
worker opens the feature store (and a logits store) itself on first use.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from cmkd_pipe.pipeline.augment import Recipe, step_seeds
from cmkd_pipe.pipeline.stores.chunk_cache import ChunkCache
from cmkd_pipe.pipeline.stores.feature_store import FeatureStore

AUTO_GPU_WORKERS = 4  # data.loader_workers: null with CUDA (on the CPU: 0, the workers would take the step's cores)


def loader_workers(setting: int | None, device: torch.device) -> int:
    """The worker count of `data.loader_workers` (null: AUTO_GPU_WORKERS with CUDA, capped by the cores; 0 else)."""
    if setting is not None:
        return int(setting)
    return min(AUTO_GPU_WORKERS, os.cpu_count() or 1) if device.type == "cuda" else 0


@dataclass(frozen=True)
class Step:
    """Training step `index` of `epoch` on this rank: the store rows of its batch."""

    epoch: int
    index: int
    rows: np.ndarray


@dataclass
class StepBatch:
    """One step's input before the device: raw rows as stored and how to turn them into the step's input."""

    rows: torch.Tensor  # [B] store rows of the batch
    source: torch.Tensor  # [B + E, T, F] raw fbank as stored (float16): the batch, then E rows mixed in
    valid: torch.Tensor  # [B + E] valid frame counts of the source rows
    recipe: Recipe  # per row of the batch: partner among the source rows, λ, mask bands, shift (stays on the CPU)
    y: torch.Tensor  # [B, K] float32 targets, already mixed like the input
    teacher_logits: torch.Tensor | None = None  # [B, K'] float32 cached teacher logits of each row's input
    teacher_perm: torch.Tensor | None = None  # [B] the teacher probabilities are mixed like the input:
    teacher_lam: torch.Tensor | None = None  # [B]   p = λ·p + (1 − λ)·p[perm]

    def _moved(self, move) -> "StepBatch":
        changes = {f.name: move(getattr(self, f.name)) for f in fields(self)
                   if f.name != "recipe" and isinstance(getattr(self, f.name), torch.Tensor)}
        return replace(self, **changes)

    def pin_memory(self) -> "StepBatch":
        """Called by the DataLoader's pinning thread (CUDA): page-locked copies, so `to` can overlap."""
        return self._moved(lambda t: t.pin_memory())

    def to(self, device: torch.device) -> "StepBatch":
        """The tensors on `device` (non-blocking copies; the source stays float16 until it is there)."""
        return self._moved(lambda t: t.to(device, non_blocking=True))


class StepPlan(Protocol):
    """The CPU half of a TeacherSource (pipeline.training.teachers): what a worker runs for one step."""

    def prepare(self, store: FeatureStore, cache: ChunkCache, rows: np.ndarray,
                generator: torch.Generator) -> StepBatch: ...

    def close(self) -> None:
        """Drop open store handles (a worker reopens its own)."""


class StepDataset(Dataset):
    """Map-style dataset whose keys are `Step`s: item = the step's `StepBatch` (see the module docstring)."""

    def __init__(self, features: Path, plan: StepPlan, *, seed: int, rank: int,
                 store: FeatureStore | None = None, cache: ChunkCache | None = None) -> None:
        """`store` / `cache`: handles already open in this process (used when there are no workers)."""
        self.features, self.plan, self.seed, self.rank = Path(features), plan, seed, rank
        self._store, self._cache = store, cache

    def close(self) -> None:
        """Forget open handles: the next item opens the store again (in a worker: its own)."""
        self._store = self._cache = None
        self.plan.close()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_store"] = state["_cache"] = None
        return state

    def open(self) -> tuple[FeatureStore, ChunkCache]:
        if self._store is None or self._cache is None:
            self._store = FeatureStore(self.features)
            self._cache = ChunkCache.resident(self._store.fbank, self._store.chunk_clips)
        return self._store, self._cache

    def __getitem__(self, step: Step) -> StepBatch:
        store, cache = self.open()
        data_seed, _ = step_seeds(self.seed, step.epoch, step.index, self.rank)
        return self.plan.prepare(store, cache, np.asarray(step.rows, dtype=np.int64),
                                 torch.Generator().manual_seed(data_seed))


def _open_in_worker(worker_id: int) -> None:
    """worker_init_fn: a forked worker must not use the parent's store handles; it opens its own."""
    info = get_worker_info()
    if info is not None:
        info.dataset.close()


class _Steps(torch.utils.data.Sampler):
    """The keys the DataLoader fetches: the steps of the epoch being iterated."""

    def __init__(self) -> None:
        self.steps: list[Step] = []

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self.steps)


class StepLoader:
    """The DataLoader over a StepDataset, with its workers kept from epoch to epoch."""

    def __init__(self, dataset: StepDataset, *, workers: int = 0, prefetch: int = 2, pin_memory: bool = False) -> None:
        if workers < 0 or prefetch < 1:
            raise ValueError(f"data.loader_workers must be >= 0 and data.prefetch >= 1, got {workers} and {prefetch}")
        self.dataset, self.workers = dataset, workers
        self._keys = _Steps()
        self.loader = DataLoader(dataset, batch_size=None, sampler=self._keys, num_workers=workers,
                                 prefetch_factor=prefetch if workers else None, persistent_workers=workers > 0,
                                 pin_memory=pin_memory, worker_init_fn=_open_in_worker,
                                 generator=torch.Generator())  # its own seed draw: the global RNG stays untouched

    def __call__(self, steps: Sequence[Step]) -> Iterator[StepBatch]:
        """The StepBatches of `steps`, in order (read ahead by the workers, which persist across calls)."""
        self._keys.steps = list(steps)
        return iter(self.loader)

    def close(self) -> None:
        """Stop the workers (they also stop when the loader is garbage collected)."""
        iterator = getattr(self.loader, "_iterator", None)
        if iterator is not None:
            iterator._shutdown_workers()
            self.loader._iterator = None
