"""Batches from a feature store: chunk-cached reads, prefetched on a background thread."""
from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from cmkd_pipe.pipeline.stores.chunk_cache import ChunkCache
from cmkd_pipe.pipeline.stores.feature_store import FeatureStore


@dataclass
class Batch:
    indices: np.ndarray  # store rows
    x: np.ndarray  # raw log-mel [B, T, F] float32
    y: np.ndarray  # multi-hot targets [B, K] float32
    valid: np.ndarray  # valid frame counts [B]


def batches(store: FeatureStore, order: Sequence[int], batch_size: int, *, drop_last: bool = False,
            prefetch: int = 2, cache: ChunkCache | None = None) -> Iterator[Batch]:
    """Yield batches of `order` (store rows) in sequence, reading ahead on a background thread; `cache`
    (e.g. a training's resident cache, used by one iterator at a time) defaults to a fresh 8-chunk one."""
    order = np.asarray(order, dtype=np.int64)
    stop = len(order) - len(order) % batch_size if drop_last else len(order)
    starts = range(0, stop, batch_size)
    cache = cache or ChunkCache(store.fbank, store.chunk_clips)
    out: queue.Queue = queue.Queue(maxsize=prefetch)
    halt = threading.Event()

    def read() -> None:
        try:
            for start in starts:
                if halt.is_set():
                    return
                rows = order[start:start + batch_size]
                out.put(Batch(rows, cache.rows(rows), store.targets[rows].astype(np.float32),
                              store.valid_frames[rows]))
            out.put(None)
        except BaseException as error:  # surfaced in the consumer
            out.put(error)

    worker = threading.Thread(target=read, daemon=True)
    worker.start()
    try:
        while True:
            item = out.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        halt.set()
        while worker.is_alive():
            try:
                out.get_nowait()
            except queue.Empty:
                worker.join(timeout=0.05)
