"""Chunk-cached row reads from a Zarr array: whole chunks decoded once, the most recent kept in memory."""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from cmkd_pipe.pipeline.stores.chunks import StoreError, unreadable_chunk


RESIDENT_BYTES = 1 << 30  # decoded chunks a training keeps across epochs (a small store stays whole)


class ChunkCache:
    """Reads whole Zarr chunks (along the first axis) and keeps the last `capacity` decoded in memory."""

    @classmethod
    def resident(cls, array, chunk_items: int, budget: int = RESIDENT_BYTES, minimum: int = 8) -> "ChunkCache":
        """A cache holding as many chunks as fit in `budget` bytes (every chunk of a small store, so
        each epoch after the first decodes nothing), at least `minimum`."""
        chunk_bytes = chunk_items * int(np.prod(array.shape[1:], dtype=np.int64)) * np.dtype(array.dtype).itemsize
        n_chunks = -(-array.shape[0] // chunk_items)
        return cls(array, chunk_items, max(minimum, min(n_chunks, budget // max(chunk_bytes, 1))))

    def __init__(self, array, chunk_items: int, capacity: int = 8) -> None:
        self.array = array
        self.chunk_items = chunk_items
        self.capacity = capacity
        self._chunks: OrderedDict[int, np.ndarray] = OrderedDict()

    def _chunk(self, index: int) -> np.ndarray:
        if index in self._chunks:
            self._chunks.move_to_end(index)
            return self._chunks[index]
        size = self.chunk_items
        try:
            data = np.asarray(self.array[index * size:(index + 1) * size])
        except Exception as error:  # a chunk damaged after its store was opened: name it
            where = getattr(getattr(self.array, "store", None), "root", "store")
            raise StoreError(unreadable_chunk(where, getattr(self.array, "path", "array"), [index], size,
                                              self.array.shape[0], error)) from None
        self._chunks[index] = data
        if len(self._chunks) > self.capacity:
            self._chunks.popitem(last=False)
        return data

    def rows(self, indices: Sequence[int]) -> np.ndarray:
        """Rows in the order given, as stored (float16 fbank: cast where it is used, e.g. on the device)."""
        size = self.chunk_items
        if len(indices) == 0:
            return np.empty((0, *self.array.shape[1:]), dtype=self.array.dtype)
        return np.stack([self._chunk(int(i) // size)[int(i) % size] for i in indices])
