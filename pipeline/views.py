"""Deterministic teacher views over a feature store: the exact augmented input a teacher saw.

A view is a pure function of (view seed, clip id, view index) (pipeline.augment.view_params); its
mixup partner is drawn from the good clips of the clip's own split, in store order. The teacher-logits
stage draws them and stores them with the logits (`ViewTable`); a student reads them from the logits
store (older stores without them: drawn again here). Both build view inputs with
`pipeline.augment.apply_recipe`, so the student replays the teacher's input bit for bit.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from cmkd_pipe.pipeline.augment import (Recipe, ViewParams, ViewSpec, ViewTable, apply_recipe, mask_fill_value,
                                        view_params)
from cmkd_pipe.pipeline.stores.chunk_cache import ChunkCache
from cmkd_pipe.pipeline.stores.feature_store import FeatureStore

StoredViews = Callable[[np.ndarray, np.ndarray], ViewTable]  # (rows, views) -> the stored table


class ViewBuilder:
    """Views of a feature store's clips: their parameters (stored or drawn) and their inputs."""

    def __init__(self, store: FeatureStore, spec: ViewSpec, cache: ChunkCache, mix_mode: str = "power",
                 stored: StoredViews | None = None) -> None:
        """`cache` reads partner rows; `stored` gives the parameters kept in a logits store (None: draw them)."""
        self.store = store
        self.spec = spec
        self.cache = cache
        self.mix_mode = mix_mode
        self.stored = stored
        self.mask_value = mask_fill_value(spec.mask_fill, store.mean)
        self.row_of = {clip: row for row, clip in enumerate(store.clip_ids)}
        good = store.ok
        self.pools = {split: store.clip_ids[good & (store.splits == split)].tolist()
                      for split in np.unique(store.splits)}
        self.frames, self.bins = store.fbank.shape[1:]

    def params(self, row: int, view: int) -> ViewParams:
        """View `view` of store row `row`, drawn (SHA-256 of seed, clip id, view)."""
        clip = str(self.store.clip_ids[row])
        return view_params(self.spec, clip, view, self.frames, self.bins, self.pools[self.store.splits[row]])

    def draw_table(self, rows: Sequence[int], views: Sequence[int]) -> ViewTable:
        """The parameters of `views` of `rows`, drawn (what the teacher-logits stage stores)."""
        return ViewTable.from_params([self.params(int(r), int(v)) for r, v in zip(rows, views)], self.row_of)

    def table(self, rows: Sequence[int], views: Sequence[int]) -> ViewTable:
        """The parameters of `views` of `rows`: read from the logits store when it keeps them, else drawn."""
        if self.stored is not None:
            return self.stored(np.asarray(rows, dtype=np.int64), np.asarray(views, dtype=np.int64))
        return self.draw_table(rows, views)

    def sources(self, rows: Sequence[int], x: np.ndarray, table: ViewTable
                ) -> tuple[torch.Tensor, torch.Tensor, Recipe]:
        """What `apply_recipe` builds the views of clips `rows` (raw fbank `x` [B, T, F]) from: the rows then
        their partners' rows [B + E, T, F] (as stored), their valid frame counts [B + E], and the recipe."""
        rows = np.asarray(rows, dtype=np.int64)
        partners = table.partner[table.partner >= 0]
        source = torch.from_numpy(np.concatenate([x, self.cache.rows(partners).astype(x.dtype, copy=False)]))
        valid = torch.from_numpy(self.store.valid_frames[np.concatenate([rows, partners])].astype(np.int64))
        return source, valid, table.recipe(partner_positions(table.partner, len(rows)))

    def inputs(self, rows: Sequence[int], x: np.ndarray, table: ViewTable) -> torch.Tensor:
        """The view inputs [B, T, F] float32 of clips `rows` whose raw fbank is `x` [B, T, F], by `table`."""
        source, valid, recipe = self.sources(rows, x, table)
        return apply_recipe(source, recipe, self.mix_mode, self.mask_value, valid).float()


def partner_positions(partner: np.ndarray, first: int) -> np.ndarray:
    """Where each row's partner sits among source rows laid out as [the rows..., their partners...]: partners
    in row order from `first` on; a row without one points at itself."""
    has = partner >= 0
    out = np.arange(len(partner), dtype=np.int64)
    out[has] = first + np.arange(int(has.sum()))
    return out
