"""The training engine: one loop for teachers, plain baselines and KD students (cached or online).

A run folder holds:
  checkpoints/last.pt   full training state (model, optimiser, scheduler, sampler, RNG) for --resume
  checkpoints/epoch_NNN.pt  model checkpoints of the weight-averaging range
  best.pt, wa.pt, final.pt  model checkpoints (final = the one exported to later stages)
  metrics.jsonl/.csv, tb/, curves.png, results.json, config.yaml
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from pipeline.augment import ViewSpec, mix_features, mix_targets, mixup_pairs, spec_augment
from pipeline.config import Normalization, PUBLISHED_STATS, dump_config
from pipeline.features import normalize
from pipeline.losses import CMKDLoss
from pipeline.metrics import summarize
from pipeline.models.checkpoint import check_compatible, load_checkpoint, save_checkpoint
from pipeline.models.factory import build_model
from pipeline.models.weights import load_imagenet_from_hub, load_weights
from pipeline.records import write_json_atomic
from pipeline.stores.feature_store import FeatureStore
from pipeline.stores.logits_store import LogitsStore
from pipeline.training.averaging import EnsembleAccumulator, average_state_dicts
from pipeline.training.batches import Batch, ChunkCache, batches
from pipeline.training.distributed import DistInfo, barrier, gather_objects, init_distributed, shutdown
from pipeline.training.logs import RunLogger
from pipeline.training.presets import select_arch
from pipeline.training.sampler import ChunkAwareSampler
from pipeline.training.schedule import build_scheduler
from pipeline.views import ViewBuilder

STATE_FORMAT = "cmkd-pipe/train-state/1"


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


def family(arch: str) -> str:
    return "ast" if arch == "ast" else "cnn"


def model_arch(requested: str, model_section: dict[str, Any]) -> str:
    """The architecture to build: `--model timm:NAME` as given; `--model cnn` may be refined by the
    preset's `model.cnn.arch` (e.g. the demo's small timm CNN), within the same family."""
    preset_arch = model_section.get("arch")
    if requested in ("cnn", "ast") and preset_arch:
        if family(preset_arch) != requested:
            raise ValueError(f"model.{requested}.arch={preset_arch!r} is not a {requested} architecture")
        return preset_arch
    return requested


class Trainer:
    def __init__(self, request: TrainRequest, dist_info: DistInfo) -> None:
        self.request = request
        self.dist = dist_info
        self.device = dist_info.device
        self.out = Path(request.out_dir)
        self.config = select_arch(request.config, family(request.arch))
        cfg = self.config
        self.store = FeatureStore(request.features)
        self._check_feature_settings()
        self.seed = int(cfg["train"]["seed"])
        _seed_everything(self.seed + dist_info.rank, bool(cfg["train"].get("deterministic", False)))
        self.train_rows = self.store.select(cfg["data"]["train"])
        self.val_rows = self.store.select(cfg["data"]["val"])
        self.test_rows = self.store.select(cfg["data"]["test"])
        if len(self.train_rows) == 0:
            raise ValueError(f"data.train {cfg['data']['train']!r} selects no usable clip in {self.store.path}")
        self.norm = self._normalization()
        self.arch = model_arch(request.arch, self.config["model"])
        self.model = self._build_model().to(self.device)
        if cfg["train"].get("channels_last") and self.device.type == "cuda" and family(request.arch) == "cnn":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.core = self.model  # the unwrapped module (checkpoints)
        if dist_info.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if cfg["train"].get("compile"):
            self.model = torch.compile(self.model)
        self.batch_size = int(cfg["data"]["batch_size"])
        self.sampler = ChunkAwareSampler(
            len(self.store), self.store.chunk_clips, indices=self.train_rows,
            weights=self.store.weights[self.train_rows] if cfg["data"].get("balanced") else None,
            epoch_len=cfg["data"].get("epoch_len"), seed=self.seed, rank=dist_info.rank,
            world_size=dist_info.world_size, drop_last=True)
        self.steps_per_epoch = max(1, len(self.sampler) // self.batch_size)
        self.epochs = int(cfg["train"]["epochs"])
        optim = cfg["optim"]
        opt_class = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[optim["name"]]
        self.optimizer = opt_class(self.core.parameters(), lr=float(optim["lr"]),
                                   weight_decay=float(optim["weight_decay"]), betas=tuple(optim["betas"]))
        sched = {k: v for k, v in cfg["schedule"].items()}
        self.scheduler = build_scheduler(self.optimizer, steps_per_epoch=self.steps_per_epoch, epochs=self.epochs,
                                         **sched)
        kd = cfg["kd"]
        self.loss = CMKDLoss(self.store.multilabel, lam=float(kd["lam"]), tau=float(kd["tau"]), form=kd["form"],
                             tau2_scaling=bool(kd["tau2_scaling"]))
        self.generator = torch.Generator().manual_seed(self.seed * 1000 + dist_info.rank)
        self.cache = ChunkCache(self.store.fbank, self.store.chunk_clips)
        self.teacher_cache: ChunkCache | None = None
        self.views: ViewBuilder | None = None
        self.online_teacher: nn.Module | None = None
        self.amp = bool(cfg["train"].get("amp")) and self.device.type == "cuda"
        self._setup_teacher()
        self.metric = cfg["eval"]["metric"]
        self.epoch = 0
        self.step = 0
        self.best: dict[str, Any] = {"value": -math.inf, "epoch": None}
        self.ensemble = EnsembleAccumulator()

    # ----------------------------------------------------------------------------------- set-up
    def _check_feature_settings(self) -> None:
        wanted = self.config.get("features", {})
        have = self.store.feature_config
        for key in ("target_frames", "num_mel_bins"):
            if key in wanted and wanted[key] is not None and int(wanted[key]) != getattr(have, key):
                raise ValueError(f"config features.{key}={wanted[key]} but the feature store {self.store.path} "
                                 f"has {getattr(have, key)}; rebuild the features or override features.{key}")

    def _normalization(self) -> Normalization:
        norm = self.config["norm"]
        if norm["source"] == "store":
            return self.store.normalization(float(norm["divisor"]))
        if norm["source"] == "published":
            mean, std = PUBLISHED_STATS[norm["published_stats"]]
            return Normalization(mean, std, float(norm["divisor"]))
        raise ValueError(f"norm.source must be 'store' or 'published', got {norm['source']!r}")

    def _build_model(self) -> nn.Module:
        options = dict(self.config["model"])
        pretrained = options.pop("pretrained", None)
        options.pop("arch", None)
        if self.arch.startswith("timm:"):
            options.pop("variant", None)  # the presets' EfficientNet variant; timm:NAME names its own backbone
        model = build_model({"arch": self.arch, **options}, self.store.n_classes,
                            self.store.feature_config.num_mel_bins, self.store.feature_config.target_frames)
        if self.request.weights is not None:
            load_weights(model, self.request.weights, new_head=self.request.new_head)
        elif pretrained == "imagenet":
            if not self.request.allow_download:
                raise ValueError("the config asks for ImageNet weights (model.pretrained=imagenet): pass --weights "
                                 "PATH (a local timm ImageNet state dict or AST/PSLA checkpoint), or "
                                 "--pretrained-from-hub to download them, or override model.pretrained=null")
            load_imagenet_from_hub(model)  # the user asked for the download explicitly
        elif pretrained:
            load_weights(model, Path(pretrained), new_head=self.request.new_head)
        return model

    def _setup_teacher(self) -> None:
        req = self.request
        self.teacher_test_scores: np.ndarray | None = None
        if req.teacher_logits and req.teacher_checkpoint:
            raise ValueError("give either --logits (cached teacher) or --teacher (online teacher), not both")
        if req.teacher_logits:
            store = LogitsStore(req.teacher_logits)
            store.check_matches(self.store)
            store.verify_readable()
            self.teacher_cache = ChunkCache(store.logits, store.chunk_clips)
            spec = ViewSpec.from_dict(store.attrs["views"])
            # replay views exactly as the teacher-logits stage built them
            mode = store.attrs["teacher"].get("view_mix_mode", "power")
            self.views = ViewBuilder(self.store, spec, self.cache, mode)
            self.teacher_info = dict(store.attrs["teacher"])
            self.teacher_test_scores = self._probabilities(self.teacher_cache.rows(self.test_rows)[:, 0])
        elif req.teacher_checkpoint:
            model, meta = load_checkpoint(req.teacher_checkpoint, map_location=self.device)
            check_compatible(meta, self.store.feature_config.to_dict(), self.store.vocabulary)
            self.online_teacher = model.to(self.device).eval().requires_grad_(False)
            self.teacher_norm = Normalization.from_dict(meta["normalization"])
            self.teacher_info = {"checkpoint": str(req.teacher_checkpoint), "model_config": meta["model_config"]}
            self.teacher_test_scores = self.predict(self.test_rows, self.online_teacher, self.teacher_norm)
        if self.teacher_test_scores is not None:
            checkpoint = Path(self.teacher_info["checkpoint"])
            self.teacher_info.update({"arch": self.teacher_info.get("arch") or
                                      self.teacher_info["model_config"].get("arch"),
                                      "run": checkpoint.parent.name})

    def _probabilities(self, logits: np.ndarray) -> np.ndarray:
        z = torch.from_numpy(np.asarray(logits, dtype=np.float32))
        return (torch.sigmoid(z) if self.store.multilabel else torch.softmax(z, dim=-1)).numpy()

    # ------------------------------------------------------------------------------- one step
    def _prepare(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Augmented, normalised input, targets, and teacher probabilities for one batch."""
        aug = self.config["augment"]
        x = torch.from_numpy(batch.x)
        y = torch.from_numpy(batch.y)
        valid = torch.from_numpy(batch.valid.astype(np.int64))
        n = len(batch.indices)
        view = torch.zeros(n, dtype=torch.long)
        if self.views is not None and self.views.spec.n_views > 1:
            view = torch.randint(0, self.views.spec.n_views, (n,), generator=self.generator)
        perm, lam = mixup_pairs(n, float(aug["mixup_rate"]), float(aug["mixup_alpha"]), self.generator)
        lam = torch.where(view > 0, torch.ones_like(lam), lam)  # viewed clips carry their own mix
        mixed = mix_features(x, perm, lam, aug["mixup_mode"], valid)
        mixed = spec_augment(mixed, int(aug["freq_mask"]), int(aug["time_mask"]), self.generator)
        y_mixed = mix_targets(y, perm, lam)
        teacher_p = None
        if self.teacher_cache is not None:
            rows = batch.indices
            clean = self.teacher_cache.rows(rows)  # [B, V, K]
            cached = torch.from_numpy(clean[np.arange(n), view.numpy()])
            teacher_p = self.loss.teacher_probs(cached)
            base = self.loss.teacher_probs(torch.from_numpy(clean[:, 0]))
            mixed_p = lam[:, None] * base + (1 - lam[:, None]) * base[perm]
            teacher_p = torch.where((view > 0)[:, None], teacher_p, mixed_p)
            viewed = (view > 0).nonzero().flatten()
            if len(viewed):
                sel = viewed.numpy()
                vx, partners, vlam = self.views.build(rows[sel], batch.x[sel], view[viewed].tolist())
                mixed[viewed] = vx
                vy = y[viewed]
                has = partners >= 0
                if has.any():
                    partner_y = torch.from_numpy(self.store.targets[partners[has]].astype(np.float32))
                    l = torch.from_numpy(vlam[has]).float()[:, None]
                    vy[torch.from_numpy(has)] = l * vy[torch.from_numpy(has)] + (1 - l) * partner_y
                y_mixed[viewed] = vy
        x_dev = mixed.to(self.device, non_blocking=True)
        if self.online_teacher is not None:
            with torch.no_grad(), self._autocast():
                teacher_logits = self.online_teacher(normalize(x_dev, self.teacher_norm)).float()
            teacher_p = self.loss.teacher_probs(teacher_logits)
        return (normalize(x_dev, self.norm), y_mixed.to(self.device),
                None if teacher_p is None else teacher_p.to(self.device))

    def _autocast(self):
        if self.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_epoch(self, start_position: int = 0) -> dict[str, float]:
        self.model.train()
        self.sampler.set_epoch(self.epoch)
        order = self.sampler.rank_order()[: self.steps_per_epoch * self.batch_size]
        done_steps = start_position // self.batch_size
        sums: dict[str, float] = {}
        count = 0
        clip = self.config["optim"].get("grad_clip")
        every = int(self.config["train"].get("checkpoint_every_steps") or 0)
        bar = tqdm(total=self.steps_per_epoch, initial=done_steps, desc=f"epoch {self.epoch + 1}/{self.epochs}",
                   disable=not (self.request.progress and self.dist.is_main), unit="step")
        started = time.perf_counter()
        data_time = 0.0
        tick = time.perf_counter()
        for step_in_epoch, batch in enumerate(batches(self.store, order[done_steps * self.batch_size:],
                                                      self.batch_size, drop_last=True), start=done_steps):
            x, y, teacher_p = self._prepare(batch)
            data_time += time.perf_counter() - tick
            with self._autocast():
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
            bar.set_postfix(loss=f"{sums['loss'] / count:.4f}",
                            clips_s=f"{count * self.batch_size / (time.perf_counter() - started):.1f}")
            bar.update(1)
            if every and (step_in_epoch + 1) % every == 0 and step_in_epoch + 1 < self.steps_per_epoch:
                self.save_state(position=(step_in_epoch + 1) * self.batch_size)
            tick = time.perf_counter()
        bar.close()
        elapsed = time.perf_counter() - started
        out = {f"train_{k}": v / max(count, 1) for k, v in sums.items()}
        out.update({"lr": self.optimizer.param_groups[0]["lr"], "epoch_seconds": elapsed,
                    "data_fraction": data_time / elapsed if elapsed else 0.0})
        return out

    # ---------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def predict(self, rows: np.ndarray, model: nn.Module | None = None,
                norm: Normalization | None = None) -> np.ndarray:
        """Class probabilities for store rows, gathered from every rank (on all ranks, in `rows` order)."""
        model = model or self.core
        norm = norm or self.norm
        model.eval()
        mine = np.arange(self.dist.rank, len(rows), self.dist.world_size)
        scores = []
        for batch in batches(self.store, rows[mine], self.batch_size):
            x = normalize(torch.from_numpy(batch.x).to(self.device), norm)
            with self._autocast():
                logits = model(x).float()
            scores.append(torch.sigmoid(logits) if self.store.multilabel else torch.softmax(logits, dim=-1))
        local = torch.cat(scores).cpu().numpy() if scores else np.zeros((0, self.store.n_classes), np.float32)
        parts = gather_objects((mine, local), self.dist)
        out = np.zeros((len(rows), self.store.n_classes), dtype=np.float32)
        for index, values in parts:
            out[index] = values
        return out

    def evaluate(self, rows: np.ndarray, model: nn.Module | None = None) -> tuple[dict[str, Any], np.ndarray]:
        scores = self.predict(rows, model)
        return summarize(scores, self.store.targets[rows], self.store.multilabel), scores

    # --------------------------------------------------------------------------- checkpoints
    def _checkpoint_meta(self) -> dict[str, Any]:
        return {"feature_config": self.store.feature_config.to_dict(), "normalization": self.norm.to_dict(),
                "vocabulary": self.store.vocabulary,
                "extra": {"arch": self.arch, "feature_fingerprint": self.store.fingerprint,
                          "multilabel": self.store.multilabel, **self.request.extra}}

    def save_model(self, path: Path, model: nn.Module | None = None) -> None:
        if self.dist.is_main:
            save_checkpoint(path, model or self.core, **self._checkpoint_meta())

    def save_state(self, position: int = 0) -> None:
        """Full training state, atomically, so --resume continues exactly from here."""
        if not self.dist.is_main:
            return
        state = {
            "format": STATE_FORMAT, "epoch": self.epoch, "step": self.step,
            "model": self.core.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "sampler": self.sampler.state_dict(consumed=position),
            "generator": self.generator.get_state(), "torch_rng": torch.get_rng_state(),
            "numpy_rng": np.random.get_state(), "python_rng": random.getstate(),
            "best": self.best, "ensemble": self.ensemble.state_dict(), "arch": self.request.arch,
            "config": self.request.config,
        }
        path = self.out / "checkpoints" / "last.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(".last.pt.tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)

    def load_state(self) -> int:
        """Restore from checkpoints/last.pt; return the position within the epoch to continue from."""
        path = self.out / "checkpoints" / "last.pt"
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"{path}: not a cmkd-pipe training state")
        if state["arch"] != self.request.arch or state["config"] != self.request.config:
            raise ValueError(f"{path}: was written by a run with another model or config; "
                             "resume with the same settings or start a new --out")
        self.core.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        np.random.set_state(state["numpy_rng"])
        random.setstate(state["python_rng"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.best = state["best"]
        self.ensemble.load_state_dict(state["ensemble"])
        return int(state["sampler"]["position"])

    # ----------------------------------------------------------------------------------- fit
    def fit(self) -> dict[str, Any]:
        cfg = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        position = 0
        if self.request.resume and (self.out / "checkpoints" / "last.pt").is_file():
            position = self.load_state()
        elif self.dist.is_main:
            (self.out / "config.yaml").write_text(dump_config(self.request.config))
        logger = RunLogger(self.out) if self.dist.is_main else None
        same_split = cfg["data"]["val"] == cfg["data"]["test"]
        wa_start, wa_end = self.wa_range()
        test_metrics = None  # stays None when a resumed run had already finished its last epoch
        while self.epoch < self.epochs:
            row = {"epoch": self.epoch + 1, **self.train_epoch(position)}
            position = 0
            test_metrics, test_scores = self.evaluate(self.test_rows)
            val_metrics = test_metrics if same_split else self.evaluate(self.val_rows)[0]
            if cfg["average"].get("ensemble", True):
                self.ensemble.add(test_scores)
            row.update({f"val_{k}": v for k, v in _scalars(val_metrics).items()})
            row.update({f"test_{k}": v for k, v in _scalars(test_metrics).items()})
            if self.teacher_test_scores is not None:
                row["teacher_agreement"] = top1_agreement(test_scores, self.teacher_test_scores)
            value = val_metrics[self.metric]
            self.epoch += 1
            if value is not None and value > self.best["value"]:
                self.best = {"value": value, "epoch": self.epoch, "test": test_metrics}
                self.save_model(self.out / "best.pt")
            if wa_start <= self.epoch <= wa_end:
                self.save_model(self.out / "checkpoints" / f"epoch_{self.epoch:03d}.pt")
            self.save_state()
            if logger:
                logger.log(row)
            barrier(self.dist)
        return self.finish(logger, test_metrics)

    def wa_range(self) -> tuple[int, int]:
        """Inclusive epoch range of weight averaging; empty (1, 0) when it is switched off."""
        average = self.config["average"]
        if average.get("wa_start_epoch") is None or average.get("wa_end_epoch") is None:
            return 1, 0
        return int(average["wa_start_epoch"]), int(average["wa_end_epoch"])

    def finish(self, logger: RunLogger | None, last_metrics: dict[str, Any] | None) -> dict[str, Any]:
        if last_metrics is None:
            last_metrics = self.evaluate(self.test_rows)[0]
        results: dict[str, Any] = {"arch": self.arch, "metric": self.metric, "epochs": self.epochs,
                                   "multilabel": self.store.multilabel, "n_test": int(len(self.test_rows)),
                                   "last": last_metrics, "best": {"epoch": self.best["epoch"],
                                                                  **self.best.get("test", {})}}
        wa_start, wa_end = self.wa_range()
        paths = [self.out / "checkpoints" / f"epoch_{e:03d}.pt" for e in range(wa_start, wa_end + 1)]
        paths = [p for p in paths if p.is_file()]
        export = "last"
        final_scores = self.predict(self.test_rows)
        if paths:
            averaged = average_state_dicts(paths, key="state_dict")
            wa_model, _ = load_checkpoint(paths[-1], map_location=self.device)
            wa_model.load_state_dict(averaged)
            wa_metrics, final_scores = self.evaluate(self.test_rows, wa_model)
            results["wa"] = {"epochs": [wa_start, wa_end], **wa_metrics}
            self.save_model(self.out / "wa.pt", wa_model)
            export = "wa"
        if self.ensemble.count:
            results["ensemble"] = summarize(self.ensemble.mean(), self.store.targets[self.test_rows],
                                            self.store.multilabel)
        results["final"] = export  # every rank returns it (the CLI prints it under torchrun too)
        if self.dist.is_main:
            source = self.out / "wa.pt" if export == "wa" else None
            if source is None:
                self.save_model(self.out / "final.pt")
            else:
                os.replace(_copy(source, self.out / ".final.pt.tmp"), self.out / "final.pt")
            results["run"] = {"name": self.out.name, "group": self.out.parent.name,
                              "role": "student" if self.teacher_test_scores is not None else "baseline"}
            predictions = {"rows": self.test_rows, "clip_ids": self.store.clip_ids[self.test_rows],
                           "scores": final_scores, "targets": self.store.targets[self.test_rows]}
            if self.teacher_test_scores is not None:
                results["teacher"] = self.teacher_info
                predictions["teacher_scores"] = self.teacher_test_scores
            tmp = self.out / ".test_predictions.tmp.npz"
            np.savez_compressed(tmp, **predictions)
            os.replace(tmp, self.out / "test_predictions.npz")
            write_json_atomic(self.out / "results.json", results)
            if logger:
                logger.plot_curves(self.out / "curves.png", metric=self.metric)
                logger.close()
        barrier(self.dist)
        return results


def run_training(request: TrainRequest) -> dict[str, Any]:
    """Train one model (single process or one torchrun rank) and return its results."""
    info = init_distributed(request.device)
    try:
        return Trainer(request, info).fit()
    finally:
        shutdown(info)


def top1_agreement(scores: np.ndarray, other: np.ndarray) -> float:
    """Share of clips whose top-scoring class is the same in both score matrices."""
    return float(np.mean(scores.argmax(axis=1) == other.argmax(axis=1))) if len(scores) else float("nan")


def _scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if not isinstance(v, (list, dict))}


def _seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def _copy(source: Path, target: Path) -> Path:
    import shutil

    shutil.copyfile(source, target)
    return target
