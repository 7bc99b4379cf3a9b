"""The training loop: steps, evaluation every epoch, checkpoints, exact resume.

The Trainer gets its collaborators built (pipeline.training.setup.build_trainer): model, optimiser,
scheduler, sampler, loss and the TeacherSource that turns a batch into input, targets and KD targets.
It writes into the run folder only what the loop needs:
  checkpoints/last.pt       full training state (model, optimiser, scheduler, sampler position, the running
                            weight average of the WA range so far) for resume
  best.pt                   the model of the best validation epoch
  metrics.jsonl/.csv, tensorboard/   one row per epoch (through the RunLogger it is given)
The train stage (stages/train.py) writes the rest (config.yaml, final.pt, wa.pt, results.json, ...).

Input: the steps of an epoch are prepared by DataLoader workers (pipeline.training.loader: rows read as
float16, the step's draws made on the CPU) and finished on the device by the TeacherSource.

Randomness: step k of epoch e on rank r draws its augmentation from a generator seeded by
(seed, e, k, r) (in whichever loader worker prepares it) and reseeds torch's global RNG (dropout) from the
same tuple (pipeline.augment.step_seeds), so a resumed run, single process or DDP, with any number of
loader workers, continues bit for bit without any saved RNG state.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from cmkd_pipe.pipeline.augment import step_seeds
from cmkd_pipe.pipeline.config import Normalization
from cmkd_pipe.pipeline.features import normalize
from cmkd_pipe.pipeline.losses import CMKDLoss
from cmkd_pipe.pipeline.metrics import summarize
from cmkd_pipe.pipeline.models.checkpoint import save_checkpoint
from cmkd_pipe.pipeline.models.registry import family_of_arch
from cmkd_pipe.pipeline.predict import autocast_for
from cmkd_pipe.pipeline.records import torch_save_atomic
from cmkd_pipe.pipeline.stores.chunk_cache import ChunkCache
from cmkd_pipe.pipeline.stores.feature_store import FeatureStore
from cmkd_pipe.pipeline.training.averaging import EnsembleAccumulator, WeightAverage
from cmkd_pipe.pipeline.training.distributed import DistInfo, barrier, predict_rows
from cmkd_pipe.pipeline.training.loader import Step, StepBatch, StepDataset, StepLoader, loader_workers
from cmkd_pipe.pipeline.training.logs import RunLogger
from cmkd_pipe.pipeline.training.sampler import ChunkAwareSampler
from cmkd_pipe.pipeline.training.teachers import TeacherSource

STATE_FORMAT = "cmkd-pipe/train-state/2"


@dataclass
class TrainRequest:
    """Everything a training run needs; `config` is a resolved preset (both model families)."""

    features: Path
    arch: str  # "cnn" | "ast" | "timm:NAME"
    config: dict[str, Any]
    out_dir: Path
    resume: bool = False
    weights: Path | None = None  # initial weights from a local file (any format weights.py reads)
    new_head: bool = False
    teacher_logits: Path | None = None  # stage two: cached teacher logits
    teacher_checkpoint: Path | None = None  # reference: online frozen teacher
    device: str | None = None
    allow_download: bool = False  # --pretrained-from-hub: the only way a run may fetch weights
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # recorded into checkpoints


TrainRun = Callable[..., dict[str, Any]]  # the train stage's entry: (features, arch, out, **options) -> results


def model_arch(requested: str, model_section: dict[str, Any]) -> str:
    """The architecture to build: `--model timm:NAME` as given; a family name (`--model cnn`) may be
    refined by the preset's `model.<family>.arch` (e.g. the demo's small timm CNN), within that family."""
    family = family_of_arch(requested)
    preset_arch = model_section.get("arch")
    if requested == family.name and preset_arch:
        if not family.owns(preset_arch):
            raise ValueError(f"model.{requested}.arch={preset_arch!r} is not a {requested} architecture")
        return preset_arch
    return requested


@dataclass
class Splits:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


@dataclass
class FitOutcome:
    """What the loop hands the train stage (which scores the final models on the test split): the best
    validation epoch (its test metrics under "test" when they were computed), the checkpoint ensemble's
    test scores and the running weight average of the WA epochs."""

    best: dict[str, Any]
    ensemble: EnsembleAccumulator
    weight_average: WeightAverage


class Trainer:
    """One loop for teachers, plain baselines and KD students; the TeacherSource makes the difference."""

    def __init__(self, *, config: dict[str, Any], store: FeatureStore, splits: Splits, core: nn.Module,
                 model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, sampler: ChunkAwareSampler,
                 loss: CMKDLoss, teacher: TeacherSource, norm: Normalization, dist: DistInfo, out: Path,
                 checkpoint_meta: dict[str, Any], identity: dict[str, Any], progress: bool = True,
                 cache: ChunkCache | None = None) -> None:
        """`core` is the bare model (checkpoints), `model` the one to call (DDP/compiled wrapper or core);
        `identity` (arch, config) must match for a resume; `checkpoint_meta` goes into model checkpoints;
        `cache`: the feature rows' cache of this process (shared with the teacher source)."""
        self.config, self.store, self.splits = config, store, splits
        self.core, self.model = core, model
        self.optimizer, self.scheduler, self.sampler, self.loss = optimizer, scheduler, sampler, loss
        self.teacher, self.norm, self.dist, self.device = teacher, norm, dist, dist.device
        self.out, self.checkpoint_meta, self.identity, self.progress = Path(out), checkpoint_meta, identity, progress
        self.seed = int(config["train"]["seed"])
        self.batch_size = int(config["data"]["batch_size"])
        self.steps_per_epoch = max(1, len(sampler) // self.batch_size)
        self.epochs = int(config["train"]["epochs"])
        self.amp = bool(config["train"].get("amp")) and self.device.type == "cuda"
        self.metric = config["eval"]["metric"]
        self.epoch = 0
        self.step = 0
        self.best: dict[str, Any] = {"value": -math.inf, "epoch": None}
        self.cache = cache or ChunkCache.resident(store.fbank, store.chunk_clips)  # training (no workers), evaluation
        data = config["data"]
        self.loader = StepLoader(StepDataset(store.path, teacher.plan(), seed=self.seed, rank=dist.rank, store=store,
                                             cache=self.cache),
                                 workers=loader_workers(data.get("loader_workers"), self.device),
                                 prefetch=int(data.get("prefetch") or 2),
                                 pin_memory=self.device.type == "cuda")
        self.ensemble = EnsembleAccumulator()
        self.weight_average = WeightAverage()
        self.partial: dict[str, Any] = {}  # loss sums of the epoch so far, saved with a mid-epoch state

    # ------------------------------------------------------------------------------- one step
    def prepare(self, batch: StepBatch, step_in_epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Normalised augmented input, targets and teacher probabilities of this rank's step on the device
        (its draws were made by the loader); seeds the step's model randomness (see the module docstring)."""
        _, model_seed = step_seeds(self.seed, self.epoch, step_in_epoch, self.dist.rank)
        torch.manual_seed(model_seed)
        inputs = self.teacher.inputs(batch)
        return normalize(inputs.x, self.norm), inputs.y, inputs.teacher_p

    def train_epoch(self, start_position: int = 0) -> dict[str, float]:
        self.model.train()
        self.sampler.set_epoch(self.epoch)
        order = self.sampler.rank_order()[: self.steps_per_epoch * self.batch_size]
        done_steps = start_position // self.batch_size
        resumed = self.partial if start_position else {}  # the steps of this epoch before a resume
        sums: dict[str, float] = dict(resumed.get("sums", {}))
        count = int(resumed.get("count", 0))
        earlier_seconds = float(resumed.get("seconds", 0.0))
        clip = self.config["optim"].get("grad_clip")
        every = int(self.config["train"].get("checkpoint_every_steps") or 0)
        bar = tqdm(total=self.steps_per_epoch, initial=done_steps, desc=f"epoch {self.epoch + 1}/{self.epochs}",
                   disable=not (self.progress and self.dist.is_main), unit="step")
        started = time.perf_counter()
        data_time = float(resumed.get("data_seconds", 0.0))
        tick = time.perf_counter()
        steps = [Step(self.epoch, k, order[k * self.batch_size:(k + 1) * self.batch_size])
                 for k in range(done_steps, self.steps_per_epoch)]
        for step_in_epoch, batch in zip((step.index for step in steps), self.loader(steps)):
            x, y, teacher_p = self.prepare(batch, step_in_epoch)
            data_time += time.perf_counter() - tick
            with autocast_for(self.device, self.amp):
                logits = self.model(x)
            total, parts = self.loss(logits.float(), y, teacher_p)
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(self.core.parameters(), float(clip))
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            count += 1
            for key, value in {"loss": total.detach(), **parts}.items():
                sums[key] = sums.get(key, 0.0) + float(value)
            seconds = earlier_seconds + time.perf_counter() - started
            bar.set_postfix(loss=f"{sums['loss'] / count:.4f}", clips_s=f"{count * self.batch_size / seconds:.1f}")
            bar.update(1)
            if every and (step_in_epoch + 1) % every == 0 and step_in_epoch + 1 < self.steps_per_epoch:
                self.partial = {"sums": dict(sums), "count": count, "seconds": seconds, "data_seconds": data_time}
                self.save_state(position=(step_in_epoch + 1) * self.batch_size)
            tick = time.perf_counter()
        bar.close()
        if self.epoch + 1 >= self.epochs:
            self.loader.close()  # the last epoch: stop the workers
        self.partial = {}
        elapsed = earlier_seconds + time.perf_counter() - started
        out = {f"train_{k}": v / max(count, 1) for k, v in sums.items()}  # over the whole epoch, resumed or not
        out.update({"lr": self.optimizer.param_groups[0]["lr"], "epoch_seconds": elapsed,
                    "data_fraction": data_time / elapsed if elapsed else 0.0})
        return out

    # ---------------------------------------------------------------------------- evaluation
    def predict(self, rows: np.ndarray, model: nn.Module | None = None) -> np.ndarray:
        """Class probabilities for store rows, gathered from every rank (on all ranks, in `rows` order)."""
        return predict_rows(model or self.core, self.store, rows, self.dist, norm=self.norm,
                            batch_size=self.batch_size, amp=self.amp, cache=self.cache)

    def evaluate(self, rows: np.ndarray, model: nn.Module | None = None) -> tuple[dict[str, Any], np.ndarray]:
        scores = self.predict(rows, model)
        return summarize(scores, self.store.targets[rows], self.store.multilabel), scores

    # --------------------------------------------------------------------------- checkpoints
    def save_model(self, path: Path, model: nn.Module | None = None) -> None:
        if self.dist.is_main:
            save_checkpoint(path, model or self.core, **self.checkpoint_meta)

    def state_path(self) -> Path:
        return self.out / "checkpoints" / "last.pt"

    def save_state(self, position: int = 0) -> None:
        """Full training state, atomically, so a resume continues exactly from here. No RNG state: every
        step reseeds from (seed, epoch, step, rank)."""
        if not self.dist.is_main:
            return
        state = {
            "format": STATE_FORMAT, "epoch": self.epoch, "step": self.step,
            "model": self.core.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "sampler": self.sampler.state_dict(consumed=position),
            "best": self.best, "ensemble": self.ensemble.state_dict(), "partial_epoch": self.partial,
            "weight_average": self.weight_average.state_dict(),
            **self.identity,
        }
        torch_save_atomic(self.state_path(), state)

    def load_state(self) -> int:
        """Restore from checkpoints/last.pt (every rank); return the position within the epoch to continue from."""
        path = self.state_path()
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"{path}: not a training state of this cmkd-pipe version ({STATE_FORMAT}); "
                             "start a new --out")
        if any(state.get(key) != value for key, value in self.identity.items()):
            raise ValueError(f"{path}: was written by a run with another model or config; "
                             "resume with the same settings or start a new --out")
        self.core.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.best = state["best"]
        self.ensemble.load_state_dict(state["ensemble"])
        self.weight_average.load_state_dict(state["weight_average"])
        self.partial = dict(state.get("partial_epoch") or {})
        return int(state["sampler"]["position"])

    # ----------------------------------------------------------------------------------- fit
    def fit(self, resume: bool = False, logger: RunLogger | None = None) -> FitOutcome:
        """Train the remaining epochs (from checkpoints/last.pt when `resume` and it exists).

        The validation split is scored every `eval.every_epochs` epochs and after the last (best epoch,
        learning curves, agreement with the teacher). The test split is scored every epoch only when the
        checkpoint ensemble needs it; otherwise only the final models are scored on it, by the caller."""
        cfg = self.config
        position = self.load_state() if resume and self.state_path().is_file() else 0
        same_split = cfg["data"]["val"] == cfg["data"]["test"]
        ensemble = bool(cfg["average"].get("ensemble", True))
        every = int(cfg["eval"].get("every_epochs") or 1)
        wa_start, wa_end = wa_range(cfg)
        while self.epoch < self.epochs:
            row = {"epoch": self.epoch + 1, **self.train_epoch(position)}
            position = 0
            validate = (self.epoch + 1) % every == 0 or self.epoch + 1 == self.epochs or (same_split and ensemble)
            val_metrics, val_scores = self.evaluate(self.splits.val) if validate else ({}, None)
            test_metrics = None
            if same_split and validate:
                test_metrics, test_scores = val_metrics, val_scores
            elif ensemble:
                test_metrics, test_scores = self.evaluate(self.splits.test)
            if ensemble:
                self.ensemble.add(test_scores)
            row.update({f"val_{k}": v for k, v in _scalars(val_metrics).items()})
            if test_metrics is not None:
                row.update({f"test_{k}": v for k, v in _scalars(test_metrics).items()})
            teacher_scores = self.teacher.probabilities(self.splits.val) if validate else None
            if teacher_scores is not None:
                row["teacher_agreement"] = top1_agreement(_taught(val_scores, self.teacher.kd_classes),
                                                          teacher_scores)
            value = val_metrics.get(self.metric)
            self.epoch += 1
            if value is not None and value > self.best["value"]:
                self.best = {"value": value, "epoch": self.epoch, "test": test_metrics}
                self.save_model(self.best_path())
            if wa_start <= self.epoch <= wa_end:
                self.weight_average.add(self.core.state_dict())
            self.save_state()
            if logger:
                logger.log(row)
            barrier(self.dist)
        return FitOutcome(self.best, self.ensemble, self.weight_average)

    def best_path(self) -> Path:
        return self.out / "best.pt"


def wa_range(config: dict[str, Any]) -> tuple[int, int]:
    """Inclusive epoch range of weight averaging; empty (1, 0) when it is switched off."""
    average = config["average"]
    if average.get("wa_start_epoch") is None or average.get("wa_end_epoch") is None:
        return 1, 0
    return int(average["wa_start_epoch"]), int(average["wa_end_epoch"])


def top1_agreement(scores: np.ndarray, other: np.ndarray) -> float:
    """Share of clips whose top-scoring class is the same in both score matrices (for a teacher with a
    label map: among the classes it scores)."""
    return float(np.mean(scores.argmax(axis=1) == other.argmax(axis=1))) if len(scores) else float("nan")


def _taught(scores: np.ndarray, classes: np.ndarray | None) -> np.ndarray:
    """The columns of the classes a teacher scores (all when it scores every class)."""
    return scores if classes is None else scores[:, classes]


def _scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if not isinstance(v, (list, dict))}
