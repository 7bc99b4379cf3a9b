"""Chunk-cached row reads from a Zarr array: whole chunks decoded once, the most recent kept in memory."""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np


class ChunkCache:
    """Reads whole Zarr chunks (along the first axis) and keeps the last `capacity` decoded in memory."""

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
        data = np.asarray(self.array[index * size:(index + 1) * size])
        self._chunks[index] = data
        if len(self._chunks) > self.capacity:
            self._chunks.popitem(last=False)
        return data

    def rows(self, indices: Sequence[int]) -> np.ndarray:
        """Rows in the order given, as float32."""
        size = self.chunk_items
        return np.stack([self._chunk(int(i) // size)[int(i) % size] for i in indices]).astype(np.float32)
