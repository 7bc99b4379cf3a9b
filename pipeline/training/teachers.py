"""Where a training step's input, targets and KD targets come from: no teacher, cached teacher logits
(stage two), or a frozen teacher run online (the reference KD setting).

Each source has two halves. `plan()` is the CPU half, a picklable `StepPlan` that DataLoader workers run
(pipeline.training.loader): it reads the step's rows as stored, draws the step's augmentation from the
step's generator only and gathers what the input needs (partner rows, cached logits, mixed targets).
`inputs(batch)` is the device half: it copies the StepBatch to the device, casts it to float32 there,
applies the drawn recipe (pipeline.augment.apply_recipe) and returns the raw augmented input, the mixed
targets and the teacher's probabilities for that input (None without a teacher):

  NoTeacher      mixup + SpecAugment (+ time shift); no KD targets.
  CachedTeacher  first draws a view per clip (when the logits store holds more than the clean view 0).
                 With K > 1 views every clip gets the teacher's exact view input (its parameters read
                 from the logits store, or drawn for a store written before they were kept; view 0 is
                 the clean input) and its cached logits for that view. With the clean view alone the
                 batch is mixed as usual and gets the same mixup of the clean teacher probabilities.
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

from cmkd_pipe.pipeline.augment import ViewSpec, ViewTable, apply_recipe, draw_batch, mask_fill_value, mix_targets
from cmkd_pipe.pipeline.config import Normalization
from cmkd_pipe.pipeline.features import normalize
from cmkd_pipe.pipeline.models.checkpoint import check_compatible, load_checkpoint
from cmkd_pipe.pipeline.models.factory import preferred_memory_format
from cmkd_pipe.pipeline.predict import model_logits, probabilities
from cmkd_pipe.pipeline.stores.chunk_cache import ChunkCache
from cmkd_pipe.pipeline.stores.feature_store import FeatureStore
from cmkd_pipe.pipeline.stores.logits_store import LogitsStore
from cmkd_pipe.pipeline.training.distributed import DistInfo, predict_rows
from cmkd_pipe.pipeline.training.loader import StepBatch
from cmkd_pipe.pipeline.views import ViewBuilder

TeacherProbs = Callable[[torch.Tensor], torch.Tensor]  # teacher logits -> KD target (τ applied), e.g. CMKDLoss


@dataclass
class TrainInputs:
    x: torch.Tensor  # raw (un-normalised) augmented log-mel [B, T, F] on the training device
    y: torch.Tensor  # mixed targets [B, K] on the device
    teacher_p: torch.Tensor | None  # teacher probabilities [B, K] on the device, or None


class AugmentPlan:
    """The CPU half of NoTeacher and OnlineTeacher: the batch's rows and its mixup / SpecAugment draws."""

    def __init__(self, augment: dict[str, Any]) -> None:
        self.augment = augment

    def prepare(self, store: FeatureStore, cache: ChunkCache, rows: np.ndarray,
                generator: torch.Generator) -> StepBatch:
        x = cache.rows(rows)
        draws = draw_batch(len(rows), x.shape[1], x.shape[2], self.augment, generator)
        y = torch.from_numpy(store.targets[rows].astype(np.float32))
        return StepBatch(torch.from_numpy(rows), torch.from_numpy(x), _valid(store, rows), draws.recipe,
                         mix_targets(y, draws.perm, draws.lam))

    def close(self) -> None:
        pass


class TeacherSource:
    """The interface; its own methods are the no-teacher behaviour (NoTeacher) the KD sources extend."""

    role = "baseline"

    def __init__(self, store: FeatureStore, augment: dict[str, Any], device: torch.device) -> None:
        self.store = store
        self.augment = {**augment, "mask_value": mask_fill_value(augment.get("mask_fill", "zero"), store.mean)}
        self.device = device
        self.info: dict[str, Any] | None = None  # the teacher's identity, recorded in results.json
        self.kd_classes: np.ndarray | None = None  # corpus classes the teacher scores (None: all)

    def plan(self) -> Any:
        """The CPU half (a pipeline.training.loader.StepPlan) that DataLoader workers run."""
        return AugmentPlan(self.augment)

    def inputs(self, batch: StepBatch) -> TrainInputs:
        """The device half: the step's input, targets and KD targets on the device."""
        batch = batch.to(self.device)
        return TrainInputs(self._augmented(batch, self.augment["mixup_mode"], self.augment["mask_value"]), batch.y,
                           None)

    @staticmethod
    def _augmented(batch: StepBatch, mode: str, mask_value: float) -> torch.Tensor:
        return apply_recipe(batch.source, batch.recipe, mode, mask_value, batch.valid).float()

    def probabilities(self, rows: np.ndarray) -> np.ndarray | None:
        return None


class NoTeacher(TeacherSource):
    """Plain training (teachers and baselines): mixup + SpecAugment, no KD targets."""


class CachedPlan:
    """The CPU half of CachedTeacher: view draws, view parameters and partner rows, cached logits, targets.
    It opens the logits store itself on first use (in each DataLoader worker), unless given open handles."""

    def __init__(self, augment: dict[str, Any], logits: Path, opened: tuple[ChunkCache, ViewBuilder] | None = None
                 ) -> None:
        self.augment, self.path, self._opened = augment, Path(logits), opened

    def close(self) -> None:
        self._opened = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_opened": None}

    def open(self, store: FeatureStore, cache: ChunkCache) -> tuple[ChunkCache, ViewBuilder]:
        if self._opened is None:
            self._opened = open_cached(store, cache, LogitsStore(self.path))
        return self._opened

    def prepare(self, store: FeatureStore, cache: ChunkCache, rows: np.ndarray,
                generator: torch.Generator) -> StepBatch:
        logits, views = self.open(store, cache)
        n, n_views = len(rows), views.spec.n_views
        view = torch.zeros(n, dtype=torch.long)
        if n_views > 1:
            view = torch.randint(0, n_views, (n,), generator=generator)
        x = cache.rows(rows)
        y = torch.from_numpy(store.targets[rows].astype(np.float32))
        cached = torch.from_numpy(logits.rows(rows))  # [B, V, K]
        if n_views == 1:  # one clean view: the batch's own augmentation, taught by the clean logits mixed alike
            draws = draw_batch(n, x.shape[1], x.shape[2], self.augment, generator)
            return StepBatch(torch.from_numpy(rows), torch.from_numpy(x), _valid(store, rows), draws.recipe,
                             mix_targets(y, draws.perm, draws.lam), cached[:, 0], draws.perm, draws.lam)
        table = views.table(rows, view.numpy())  # view 0: the clean input
        has = table.partner >= 0
        weight = torch.from_numpy(table.lam[has]).float()[:, None]  # targets mixed with the view's partner by its λ
        y[torch.from_numpy(has)] = weight * y[torch.from_numpy(has)] + (1 - weight) * torch.from_numpy(
            store.targets[table.partner[has]].astype(np.float32))
        source, valid, recipe = views.sources(rows, x, table)
        return StepBatch(torch.from_numpy(rows), source, valid, recipe, y, cached[torch.arange(n), view],
                         torch.arange(n), torch.ones(n))


def open_cached(store: FeatureStore, cache: ChunkCache, logits: LogitsStore) -> tuple[ChunkCache, ViewBuilder]:
    """The logits' resident cache and the view builder of a logits store (its stored view parameters, or
    drawn ones for a store written before they were kept)."""
    spec = ViewSpec.from_dict(logits.attrs["views"])
    mode = logits.attrs["teacher"].get("view_mix_mode", "power")
    stored = (lambda rows, views: ViewTable(*logits.view_params(rows, views))) if logits.has_view_params else None
    return (ChunkCache.resident(logits.logits, logits.chunk_clips),
            ViewBuilder(store, spec, cache, mode, stored=stored))


class CachedTeacher(TeacherSource):
    """KD targets from a logits store, replaying the teacher's views exactly.

    With K > 1 cached views the student sees only those: each clip draws a view, view 0 being the clean,
    unmixed input. With one (clean) view the student gets its own mixup and SpecAugment, taught by the
    clean logits (mixed by the same λ): the cheap mode (docs/DEMO_CORPUS.md compares the two on validation)."""

    role = "student"

    def __init__(self, store: FeatureStore, augment: dict[str, Any], device: torch.device, logits: Path,
                 teacher_probs: TeacherProbs, cache: ChunkCache | None = None) -> None:
        """`cache`: the feature rows' cache of this process (shared with the plan when it runs here)."""
        super().__init__(store, augment, device)
        cached = LogitsStore(logits)
        cached.check_matches(store)
        cached.verify_readable()
        self.path = Path(logits)
        self.logits, self.views = open_cached(store, cache or ChunkCache.resident(store.fbank, store.chunk_clips),
                                              cached)
        self.teacher_probs = teacher_probs
        self.info = _with_run(dict(cached.attrs["teacher"]))
        self.kd_classes = cached.class_map

    def plan(self) -> CachedPlan:
        return CachedPlan(self.augment, self.path, (self.logits, self.views))

    def inputs(self, batch: StepBatch) -> TrainInputs:
        batch = batch.to(self.device)
        if self.views.spec.n_views > 1:  # every row is a cached view (view 0: the clean input)
            x = self._augmented(batch, self.views.mix_mode, self.views.mask_value)
        else:
            x = self._augmented(batch, self.augment["mixup_mode"], self.augment["mask_value"])
        p = self.teacher_probs(batch.teacher_logits)
        lam = batch.teacher_lam.to(p.dtype)[:, None]
        return TrainInputs(x, batch.y, lam * p + (1 - lam) * p[batch.teacher_perm])

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

    def inputs(self, batch: StepBatch) -> TrainInputs:
        plain = super().inputs(batch)
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
                   amp: bool, channels_last: bool = False, cache: ChunkCache | None = None) -> TeacherSource:
    """The source a run asks for: --logits (cached), --teacher (online), or neither. `cache`: this process's
    cache of the feature rows (view partners are read through it when the plan runs here)."""
    if logits and checkpoint:
        raise ValueError("give either --logits (cached teacher) or --teacher (online teacher), not both")
    if logits:
        return CachedTeacher(store, augment, dist.device, Path(logits), teacher_probs, cache)
    if checkpoint:
        return OnlineTeacher(store, augment, dist, Path(checkpoint), teacher_probs, batch_size=batch_size, amp=amp,
                             channels_last=channels_last)
    return NoTeacher(store, augment, dist.device)


def _valid(store: FeatureStore, rows: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(store.valid_frames[rows].astype(np.int64))


def _with_run(info: dict[str, Any]) -> dict[str, Any]:
    """The teacher's identity plus its architecture and run folder name (the checkpoint's parent)."""
    arch = info.get("arch") or info["model_config"].get("arch")
    return {**info, "arch": arch, "run": Path(info["checkpoint"]).parent.name}
