"""Chunk-aware, DDP-aware, resumable sampler over the clips of a chunked feature store.

The feature store is chunked along clips (`chunk_size` clips a chunk), so reading clips in random
order touches a new chunk on almost every read. This sampler keeps reads chunk-local: each epoch the
chunks are put in a random order and cut into windows of `window_chunks` consecutive chunks; the items
of one window are shuffled together and windows follow each other. A batch therefore touches at most
a few chunks while the item order is still well mixed.

Balanced sampling (AST/PSLA) draws `epoch_len` items with replacement in proportion to `weights`,
then orders the draws the same chunk-local way.

DDP: every rank builds the same global order (seeded by `seed` and the epoch), pads it to a multiple
of `world_size` by repeating its head (or drops the tail with `drop_last`) and takes every
`world_size`-th item from position `rank` (the `DistributedSampler` recipe).

Resume: `state_dict()` records the epoch and how many of this rank's items were consumed;
`load_state_dict()` makes the next iteration continue from there.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler


class ChunkAwareSampler(Sampler[int]):
    """Yields store indices (clip rows of the feature store) in a chunk-local shuffled order.

    n_items: clips in the store; chunk_size: clips per store chunk.
    indices: the store indices to sample from (e.g. the train split), default all of them.
    weights: balanced-sampling weights aligned with `indices` (None: every item once per epoch).
    epoch_len: items per epoch over all ranks (default len(indices)); unweighted epochs longer than
      the subset chain several shuffled passes, shorter ones take the head of one pass.
    window_chunks: chunks whose items are shuffled together (1: every chunk is read contiguously).
    shuffle: False gives the store order (evaluation); weighted sampling needs shuffle=True.
    """

    def __init__(self, n_items: int, chunk_size: int, *, indices: Sequence[int] | np.ndarray | None = None,
                 weights: Sequence[float] | np.ndarray | None = None, epoch_len: int | None = None,
                 window_chunks: int = 4, shuffle: bool = True, seed: int = 0, rank: int = 0,
                 world_size: int = 1, drop_last: bool = False) -> None:
        if n_items < 1 or chunk_size < 1:
            raise ValueError(f"sampler: n_items ({n_items}) and chunk_size ({chunk_size}) must be >= 1")
        if window_chunks < 1:
            raise ValueError(f"sampler: window_chunks must be >= 1, got {window_chunks}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"sampler: need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
        if seed < 0:
            raise ValueError(f"sampler: seed must be >= 0, got {seed}")
        self.indices = _check_indices(indices, n_items)
        self.weights = None if weights is None else _check_weights(weights, len(self.indices))
        if self.weights is not None and not shuffle:
            raise ValueError("sampler: weighted (balanced) sampling is random; it needs shuffle=True")
        if epoch_len is not None and epoch_len < 1:
            raise ValueError(f"sampler: epoch_len must be >= 1 or None, got {epoch_len}")
        self.chunk_size = chunk_size
        self.epoch_len = len(self.indices) if epoch_len is None else int(epoch_len)
        self.window_chunks = window_chunks
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        if drop_last and self.epoch_len < world_size:
            raise ValueError(f"sampler: epoch of {self.epoch_len} items cannot feed {world_size} ranks "
                             "with drop_last=True")
        self.epoch = 0
        self._start = 0    # position the next iteration starts from (set by load_state_dict)
        self._yielded = 0  # this rank's items handed out so far in the current epoch

    def __len__(self) -> int:
        """This rank's items per epoch."""
        if self.drop_last:
            return self.epoch_len // self.world_size
        return -(-self.epoch_len // self.world_size)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration yields (a new epoch starts at its beginning)."""
        if epoch != self.epoch:
            self._start = self._yielded = 0
        self.epoch = epoch

    def global_order(self, epoch: int | None = None) -> np.ndarray:
        """The epoch's order over all ranks (store indices, before padding): the same on every rank."""
        epoch = self.epoch if epoch is None else epoch
        rng = np.random.default_rng([self.seed, epoch])
        if self.weights is not None:
            drawn = rng.choice(len(self.indices), size=self.epoch_len, replace=True, p=self.weights)
            return self._chunk_local(self.indices[drawn], rng)
        passes, order = -(-self.epoch_len // len(self.indices)), []
        for _ in range(passes):
            order.append(self._chunk_local(self.indices, rng) if self.shuffle else self.indices)
        return np.concatenate(order)[: self.epoch_len]

    def rank_order(self, epoch: int | None = None) -> np.ndarray:
        """This rank's share of the epoch: padded/truncated global order, every world_size-th item."""
        order = self.global_order(epoch)
        total = len(self) * self.world_size
        if total > len(order):
            order = np.concatenate([order, np.resize(order, total - len(order))])
        return order[self.rank:total:self.world_size]

    def __iter__(self) -> Iterator[int]:
        order = self.rank_order()[self._start:]
        self._yielded, self._start = self._start, 0
        return self._count(order)

    def _count(self, order: np.ndarray) -> Iterator[int]:
        for index in order:
            self._yielded += 1
            yield int(index)

    def state_dict(self, consumed: int | None = None) -> dict[str, Any]:
        """Resume point: epoch, seed and this rank's items consumed in the epoch.

        DataLoader workers fetch indices ahead of the training loop, so the loop should pass
        `consumed`: this rank's items its finished steps used since the epoch began (a resumed
        epoch counts from its start, not from the resume point). Without it, the count handed out
        so far is used, which is exact only when nothing prefetches.
        """
        position = self._yielded if consumed is None else int(consumed)
        if not 0 <= position <= len(self):
            raise ValueError(f"sampler: consumed={position} outside this rank's epoch of {len(self)} items")
        return {"epoch": self.epoch, "position": position, "seed": self.seed,
                "world_size": self.world_size, "epoch_len": self.epoch_len}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Make the next iteration continue epoch `state['epoch']` after `state['position']` items."""
        for key, mine in (("world_size", self.world_size), ("epoch_len", self.epoch_len)):
            if state.get(key, mine) != mine:
                raise ValueError(f"sampler state: saved with {key}={state[key]}, now {mine}; resume with the "
                                 "same number of ranks and the same data selection")
        position = int(state["position"])
        if not 0 <= position <= len(self):
            raise ValueError(f"sampler state: position {position} outside this rank's epoch of {len(self)} items")
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self._start = self._yielded = position

    def _chunk_local(self, items: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """`items` grouped by window of `window_chunks` randomly ordered chunks, shuffled within a window."""
        chunks, chunk_of_item = np.unique(items // self.chunk_size, return_inverse=True)
        window = (rng.permutation(len(chunks)) // self.window_chunks)[chunk_of_item]
        return items[np.lexsort((rng.random(len(items)), window))]


def _check_indices(indices: Sequence[int] | np.ndarray | None, n_items: int) -> np.ndarray:
    if indices is None:
        return np.arange(n_items, dtype=np.int64)
    array = np.asarray(indices)
    if array.ndim != 1 or len(array) == 0 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError("sampler: indices must be a non-empty 1-D array of integer store indices")
    if array.min() < 0 or array.max() >= n_items:
        raise ValueError(f"sampler: indices must lie in [0, {n_items}), found {array.min()}..{array.max()}")
    if len(np.unique(array)) != len(array):
        raise ValueError("sampler: indices contain duplicates; pass each store index once")
    return array.astype(np.int64)


def _check_weights(weights: Sequence[float] | np.ndarray, n: int) -> np.ndarray:
    array = np.asarray(weights, dtype=np.float64)
    if array.shape != (n,):
        raise ValueError(f"sampler: weights must have one entry per sampled index ({n}), got shape {array.shape}")
    if not np.all(np.isfinite(array)) or array.min() < 0 or array.sum() <= 0:
        raise ValueError("sampler: weights must be finite, >= 0 and not all zero")
    return array / array.sum()
