"""Where a training step's input, targets and KD targets come from: no teacher, cached teacher logits
(stage two), or a frozen teacher run online (the reference KD setting).

`TeacherSource.inputs(batch, generator)` augments one batch with draws from `generator` only
(pipeline.augment.augment_batch) and returns the raw augmented input on the device, the mixed targets,
and the teacher's probabilities for that input (None without a teacher):

  NoTeacher      mixup + SpecAugment; no KD targets.
  CachedTeacher  first draws a view per clip (when the logits store holds more than the clean view 0).
                 Viewed clips get the teacher's exact view input (pipeline.views.ViewBuilder, unmixed
                 by the batch mixup) and its cached logits for that view; clean clips are mixed as
                 usual and get the same mixup of the clean teacher probabilities.
  OnlineTeacher  mixup + SpecAugment, then the frozen teacher's forward on the same augmented input.

`probabilities(rows)` gives the teacher's (τ = 1) class probabilities on store rows (the validation
split for the agreement metric, the test split for test_predictions.npz); the online teacher scores a
row set on first use and keeps it.

A teacher imported with a label map (an AudioSet teacher on FSD50K) scores only some corpus classes:
`kd_classes` lists them (corpus indices, in the order of the teacher's columns; None: every class), its KD
targets and test probabilities have those columns only, and the loss distils only them.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmkd_pipe.pipeline.augment import ViewSpec, augment_batch, mask_fill_value
from cmkd_pipe.pipeline.config import Normalization
from cmkd_pipe.pipeline.features import normalize
from cmkd_pipe.pipeline.models.checkpoint import check_compatible, load_checkpoint
from cmkd_pipe.pipeline.models.factory import preferred_memory_format
from cmkd_pipe.pipeline.predict import model_logits, probabilities
from cmkd_pipe.pipeline.stores.chunk_cache import ChunkCache
from cmkd_pipe.pipeline.stores.feature_store import FeatureStore
from cmkd_pipe.pipeline.stores.logits_store import LogitsStore
from cmkd_pipe.pipeline.training.batches import Batch
from cmkd_pipe.pipeline.training.distributed import DistInfo, predict_rows
from cmkd_pipe.pipeline.views import ViewBuilder

TeacherProbs = Callable[[torch.Tensor], torch.Tensor]  # teacher logits -> KD target (τ applied), e.g. CMKDLoss


@dataclass
class TrainInputs:
    x: torch.Tensor  # raw (un-normalised) augmented log-mel [B, T, F] on the training device
    y: torch.Tensor  # mixed targets [B, K] on the device
    teacher_p: torch.Tensor | None  # teacher probabilities [B, K] on the device, or None


class TeacherSource:
    """The interface; its own methods are the no-teacher behaviour (NoTeacher) the KD sources extend."""

    role = "baseline"

    def __init__(self, store: FeatureStore, augment: dict[str, Any], device: torch.device) -> None:
        self.store = store
        self.augment = {**augment, "mask_value": mask_fill_value(augment.get("mask_fill", "zero"), store.mean)}
        self.device = device
        self.info: dict[str, Any] | None = None  # the teacher's identity, recorded in results.json
        self.kd_classes: np.ndarray | None = None  # corpus classes the teacher scores (None: all)

    def inputs(self, batch: Batch, generator: torch.Generator) -> TrainInputs:
        out = augment_batch(torch.from_numpy(batch.x), torch.from_numpy(batch.y),
                            torch.from_numpy(batch.valid.astype(np.int64)), self.augment, generator)
        return TrainInputs(out.x.to(self.device, non_blocking=True), out.y.to(self.device), None)

    def probabilities(self, rows: np.ndarray) -> np.ndarray | None:
        return None


class NoTeacher(TeacherSource):
    """Plain training (teachers and baselines): mixup + SpecAugment, no KD targets."""


class CachedTeacher(TeacherSource):
    """KD targets from a logits store, replaying the teacher's views exactly.

    With K > 1 cached views the student sees only those: each clip draws a view, view 0 being the clean,
    unmixed input. With one (clean) view the student gets its own mixup and SpecAugment, taught by the
    clean logits (mixed by the same λ): the cheap mode (docs/DEMO_CORPUS.md compares the two on validation)."""

    role = "student"

    def __init__(self, store: FeatureStore, augment: dict[str, Any], device: torch.device, logits: Path,
                 teacher_probs: TeacherProbs) -> None:
        super().__init__(store, augment, device)
        cached = LogitsStore(logits)
        cached.check_matches(store)
        cached.verify_readable()
        self.logits = ChunkCache.resident(cached.logits, cached.chunk_clips)
        spec = ViewSpec.from_dict(cached.attrs["views"])
        mode = cached.attrs["teacher"].get("view_mix_mode", "power")
        self.views = ViewBuilder(store, spec, ChunkCache.resident(store.fbank, store.chunk_clips), mode)
        self.teacher_probs = teacher_probs
        self.info = _with_run(dict(cached.attrs["teacher"]))
        self.kd_classes = cached.class_map

    def inputs(self, batch: Batch, generator: torch.Generator) -> TrainInputs:
        n = len(batch.indices)
        view = torch.zeros(n, dtype=torch.long)
        if self.views.spec.n_views > 1:
            view = torch.randint(0, self.views.spec.n_views, (n,), generator=generator)
        viewed = view > 0
        y = torch.from_numpy(batch.y)
        clean = self.logits.rows(batch.indices)  # [B, V, K]
        base = self.teacher_probs(torch.from_numpy(clean[:, 0]))
        if self.views.spec.n_views > 1:  # only cached views: view-0 rows stay the clean input the teacher saw
            x = torch.tensor(batch.x, dtype=torch.float32)  # copies: the batch's arrays are not ours to write
            targets, teacher_p = y.to(torch.float32, copy=True), base.clone()
        else:  # one clean view: the batch's own augmentation, taught by the clean logits mixed alike
            out = augment_batch(torch.from_numpy(batch.x), y, torch.from_numpy(batch.valid.astype(np.int64)),
                                self.augment, generator)
            x, targets = out.x, out.y
            teacher_p = out.lam[:, None] * base + (1 - out.lam[:, None]) * base[out.perm]
        rows = viewed.nonzero().flatten()
        if len(rows):
            sel = rows.numpy()
            teacher_p[rows] = self.teacher_probs(torch.from_numpy(clean[sel, view[rows].numpy()]))
            x[rows], partners, lam = self.views.build(batch.indices[sel], batch.x[sel], view[rows].tolist())
            targets[rows] = self._view_targets(y[rows].float(), partners, lam)
        return TrainInputs(x.to(self.device, non_blocking=True), targets.to(self.device),
                           teacher_p.to(self.device))

    def _view_targets(self, y: torch.Tensor, partners: np.ndarray, lam: np.ndarray) -> torch.Tensor:
        """Targets of viewed clips: mixed with their view's own partner by the view's λ."""
        has = partners >= 0
        if has.any():
            partner_y = torch.from_numpy(self.store.targets[partners[has]].astype(np.float32))
            weight = torch.from_numpy(lam[has]).float()[:, None]
            y[torch.from_numpy(has)] = weight * y[torch.from_numpy(has)] + (1 - weight) * partner_y
        return y

    def probabilities(self, rows: np.ndarray) -> np.ndarray:
        return probabilities(self.logits.rows(rows)[:, 0], self.store.multilabel)


class OnlineTeacher(TeacherSource):
    """KD targets from a frozen teacher checkpoint run on the student's augmented input."""

    role = "student"

    def __init__(self, store: FeatureStore, augment: dict[str, Any], dist: DistInfo, checkpoint: Path,
                 teacher_probs: TeacherProbs, *, batch_size: int, amp: bool, channels_last: bool = False) -> None:
        super().__init__(store, augment, dist.device)
        model, meta = load_checkpoint(checkpoint, map_location=dist.device)
        if channels_last:  # the student's train.channels_last, for a like-for-like online reference
            model = preferred_memory_format(model)
        label_map = check_compatible(meta, store.feature_config.to_dict(), store.vocabulary)
        self.columns: torch.Tensor | None = None  # the teacher outputs of `kd_classes` (a label map's), None: all
        if label_map is not None:
            self.kd_classes = np.asarray(label_map.corpus_classes, dtype=np.int64)
            self.columns = torch.tensor(label_map.teacher_columns, device=dist.device)
        self.model = model.to(dist.device).eval().requires_grad_(False)
        self.norm = Normalization.from_dict(meta["normalization"])
        self.teacher_probs = teacher_probs
        self.dist, self.batch_size, self.amp = dist, batch_size, amp
        self.info = _with_run({"checkpoint": str(checkpoint), "model_config": meta["model_config"]})
        self._scored: dict[bytes, np.ndarray] = {}  # teacher probabilities per row set (validation, test)

    def inputs(self, batch: Batch, generator: torch.Generator) -> TrainInputs:
        plain = super().inputs(batch, generator)
        logits = model_logits(self.model, normalize(plain.x, self.norm), self.amp)
        if self.columns is not None:
            logits = logits[:, self.columns]
        return TrainInputs(plain.x, plain.y, self.teacher_probs(logits))

    def probabilities(self, rows: np.ndarray) -> np.ndarray:
        """Scored on first use (all ranks together under DDP), then kept per row set."""
        key = np.asarray(rows, dtype=np.int64).tobytes()
        if key not in self._scored:
            scores = predict_rows(self.model, self.store, rows, self.dist, norm=self.norm,
                                  batch_size=self.batch_size, amp=self.amp)
            if self.columns is not None:
                scores = scores[:, self.columns.cpu().numpy()]
            self._scored[key] = scores
        return self._scored[key]


def teacher_source(store: FeatureStore, augment: dict[str, Any], dist: DistInfo, *, logits: Path | None,
                   checkpoint: Path | None, teacher_probs: TeacherProbs, batch_size: int,
                   amp: bool, channels_last: bool = False) -> TeacherSource:
    """The source a run asks for: --logits (cached), --teacher (online), or neither."""
    if logits and checkpoint:
        raise ValueError("give either --logits (cached teacher) or --teacher (online teacher), not both")
    if logits:
        return CachedTeacher(store, augment, dist.device, Path(logits), teacher_probs)
    if checkpoint:
        return OnlineTeacher(store, augment, dist, Path(checkpoint), teacher_probs, batch_size=batch_size, amp=amp,
                             channels_last=channels_last)
    return NoTeacher(store, augment, dist.device)


def _with_run(info: dict[str, Any]) -> dict[str, Any]:
    """The teacher's identity plus its architecture and run folder name (the checkpoint's parent)."""
    arch = info.get("arch") or info["model_config"].get("arch")
    return {**info, "arch": arch, "run": Path(info["checkpoint"]).parent.name}
