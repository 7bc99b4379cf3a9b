"""Deterministic teacher views over a feature store: the exact augmented input a teacher saw.

A view is a pure function of (view seed, clip id, view index) (pipeline.augment.view_params); its
mixup partner is drawn from the good clips of the clip's own split, in store order. The teacher-logits
stage and the student both build view inputs here, so the student replays the teacher's input bit for bit.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from cmkd_pipe.pipeline.augment import ViewParams, ViewSpec, apply_views, mask_fill_value, view_params
from cmkd_pipe.pipeline.stores.feature_store import FeatureStore
from cmkd_pipe.pipeline.stores.chunk_cache import ChunkCache


class ViewBuilder:
    def __init__(self, store: FeatureStore, spec: ViewSpec, cache: ChunkCache, mix_mode: str = "power") -> None:
        self.store = store
        self.spec = spec
        self.cache = cache
        self.mix_mode = mix_mode
        self.mask_value = mask_fill_value(spec.mask_fill, store.mean)
        self.row_of = {clip: row for row, clip in enumerate(store.clip_ids)}
        good = store.ok
        self.pools = {split: store.clip_ids[good & (store.splits == split)].tolist()
                      for split in np.unique(store.splits)}
        self.frames, self.bins = store.fbank.shape[1:]

    def params(self, row: int, view: int) -> ViewParams:
        clip = str(self.store.clip_ids[row])
        return view_params(self.spec, clip, view, self.frames, self.bins, self.pools[self.store.splits[row]])

    def build(self, rows: Sequence[int], x: np.ndarray, views: Sequence[int]
              ) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        """Inputs of `views` for clips `rows` whose raw fbank is `x` [B, T, F].

        Returns (augmented raw log-mel [B, T, F], partner rows [B] (−1: none), λ [B]).
        """
        params = [self.params(int(r), int(v)) for r, v in zip(rows, views)]
        partners = np.array([self.row_of[p.partner] if p.partner is not None else -1 for p in params])
        lam = np.array([p.lam for p in params], dtype=np.float64)
        valid = self.store.valid_frames[np.asarray(rows)]
        partner_x = None
        partner_valid = None
        if (partners >= 0).any():
            safe = np.where(partners >= 0, partners, np.asarray(rows))
            partner_x = torch.from_numpy(self.cache.rows(safe))
            partner_valid = self.store.valid_frames[safe]
        out = apply_views(torch.from_numpy(x), partner_x, params, self.mix_mode, self.mask_value,
                          valid_frames=valid, partner_valid_frames=partner_valid)
        return out.float(), partners, lam
