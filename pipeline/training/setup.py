"""Builds a Trainer's collaborators from a TrainRequest: data splits, normalisation, model (and its
DDP/compile wrappers), optimiser, scheduler, sampler, loss and teacher source."""
from __future__ import annotations

import os
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cmkd_pipe.pipeline.config import PUBLISHED_STATS, Normalization
from cmkd_pipe.pipeline.losses import CMKDLoss
from cmkd_pipe.pipeline.models.factory import build_model, preferred_memory_format
from cmkd_pipe.pipeline.models.weights import load_imagenet_from_hub, load_weights
from cmkd_pipe.pipeline.stores.chunk_cache import ChunkCache
from cmkd_pipe.pipeline.stores.feature_store import FeatureStore
from cmkd_pipe.pipeline.training.distributed import DistInfo
from cmkd_pipe.pipeline.models.registry import family_of_arch
from cmkd_pipe.pipeline.training.engine import Splits, Trainer, TrainRequest, model_arch
from cmkd_pipe.pipeline.training.presets import select_family
from cmkd_pipe.pipeline.training.sampler import ChunkAwareSampler
from cmkd_pipe.pipeline.training.schedule import build_scheduler
from cmkd_pipe.pipeline.training.schema import RUNTIME_KEYS
from cmkd_pipe.pipeline.training.teachers import teacher_source


def build_trainer(request: TrainRequest, dist: DistInfo) -> Trainer:
    """A Trainer for `request` on this process (one torchrun rank, or the only process)."""
    family = family_of_arch(request.arch).name
    config = select_family(request.config, family)
    store = FeatureStore(request.features)
    check_feature_settings(config, store)
    seed = int(config["train"]["seed"])
    seed_everything(seed + dist.rank, bool(config["train"].get("deterministic", False)))
    data = config["data"]
    splits = Splits(*(store.select(data[name]) for name in ("train", "val", "test")))
    if len(splits.train) == 0:
        raise ValueError(f"data.train {data['train']!r} selects no usable clip in {store.path}")
    norm = normalization(config["norm"], store)
    arch = model_arch(request.arch, config["model"][family])
    core = build_network(arch, config["model"][family], store, request).to(dist.device)
    if config["train"].get("channels_last"):
        core = preferred_memory_format(core)
    model: nn.Module = core
    if dist.enabled:
        model = nn.parallel.DistributedDataParallel(core, device_ids=[dist.device.index]
                                                    if dist.device.type == "cuda" else None)
    if config["train"].get("compile"):
        model = torch.compile(model)
    batch_size = int(data["batch_size"])
    sampler = ChunkAwareSampler(
        len(store), store.chunk_clips, indices=splits.train,
        weights=store.weights[splits.train] if data.get("balanced") else None,
        epoch_len=data.get("epoch_len"), seed=seed, rank=dist.rank, world_size=dist.world_size, drop_last=True)
    optim = config["optim"]
    opt_class = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[optim["name"]]
    # fused: one kernel for all parameters (CPU and CUDA), 4-5 % faster demo-sized steps than foreach on the CPU
    optimizer = opt_class(core.parameters(), lr=float(optim["lr"]), weight_decay=float(optim["weight_decay"]),
                          betas=tuple(optim["betas"]), fused=dist.device.type in ("cpu", "cuda"))
    scheduler = build_scheduler(optimizer, steps_per_epoch=max(1, len(sampler) // batch_size),
                                epochs=int(config["train"]["epochs"]), **config["schedule"])
    kd = config["kd"]
    loss = CMKDLoss(store.multilabel, lam=float(kd["lam"]), tau=float(kd["tau"]), form=kd["form"],
                    tau2_scaling=bool(kd["tau2_scaling"]))
    amp = bool(config["train"].get("amp")) and dist.device.type == "cuda"
    cache = ChunkCache.resident(store.fbank, store.chunk_clips)  # this process's feature rows
    teacher = teacher_source(store, config["augment"], dist, logits=request.teacher_logits,
                             checkpoint=request.teacher_checkpoint, teacher_probs=loss.teacher_probs,
                             batch_size=batch_size, amp=amp, cache=cache,
                             channels_last=bool(config["train"].get("channels_last")))
    if teacher.kd_classes is not None:  # a teacher scoring some classes: distil only those
        loss.kd_classes = tuple(int(c) for c in teacher.kd_classes)
    meta = {"feature_config": store.feature_config.to_dict(), "normalization": norm.to_dict(),
            "vocabulary": store.vocabulary,
            "extra": {"arch": arch, "feature_fingerprint": store.fingerprint,
                      "multilabel": store.multilabel, **request.extra}}
    return Trainer(config=config, store=store, splits=splits, core=core, model=model, optimizer=optimizer,
                   scheduler=scheduler, sampler=sampler, loss=loss, teacher=teacher, norm=norm, dist=dist,
                   out=request.out_dir, checkpoint_meta=meta,
                   identity={"arch": request.arch, "config": without_runtime(request.config)}, progress=request.progress,
                   cache=cache)


def without_runtime(config: dict[str, Any]) -> dict[str, Any]:
    """`config` without the data-loader settings and the store codec (schema.RUNTIME_KEYS of the data and
    features sections): a run may resume with other loader workers or a recompressed store. (The
    train-section keys stay: states written before this kept them.)"""
    out = dict(config)
    for section in ("data", "features"):
        out[section] = {key: value for key, value in config.get(section, {}).items()
                        if (section, key) not in RUNTIME_KEYS}
    return out


def check_feature_settings(config: dict[str, Any], store: FeatureStore) -> None:
    wanted = config.get("features", {})
    have = store.feature_config
    for key in ("target_frames", "num_mel_bins"):
        if key in wanted and wanted[key] is not None and int(wanted[key]) != getattr(have, key):
            raise ValueError(f"config features.{key}={wanted[key]} but the feature store {store.path} "
                             f"has {getattr(have, key)}; rebuild the features or override features.{key}")


# published statistics "differ" from a store's when the means are more than half a std apart or the stds
# more than 25 % apart: then the normalised input is off-centre or mis-scaled by more than augmentation does
STATS_MEAN_MARGIN, STATS_STD_RATIO = 0.5, 1.25


def stats_mismatch(name: str, published: tuple[float, float], measured: tuple[float, float]) -> str | None:
    """A one-line warning when a feature store's measured mean/std differ from the published ones."""
    (p_mean, p_std), (m_mean, m_std) = published, measured
    ratio = max(p_std, m_std) / max(min(p_std, m_std), 1e-12)
    if abs(p_mean - m_mean) <= STATS_MEAN_MARGIN * p_std and ratio <= STATS_STD_RATIO:
        return None
    return (f"norm: the feature store's mean/std {m_mean:.2f}/{m_std:.2f} differ from the published {name} "
            f"statistics {p_mean:.2f}/{p_std:.2f} used to normalise (more than {STATS_MEAN_MARGIN} std apart "
            f"or a std ratio over {STATS_STD_RATIO}); set norm.source=store to use the store's own")


def normalization(norm: dict[str, Any], store: FeatureStore) -> Normalization:
    if norm["source"] == "store":
        return store.normalization(float(norm["divisor"]))
    if norm["source"] == "published":
        mean, std = PUBLISHED_STATS[norm["published_stats"]]
        mismatch = stats_mismatch(norm["published_stats"], (mean, std), (store.mean, store.std))
        if mismatch:
            warnings.warn(mismatch, stacklevel=2)
        return Normalization(mean, std, float(norm["divisor"]))
    raise ValueError(f"norm.source must be 'store' or 'published', got {norm['source']!r}")


def build_network(arch: str, model_section: dict[str, Any], store: FeatureStore, request: TrainRequest) -> nn.Module:
    """The model with its initial weights (--weights, the preset's `pretrained`, or none)."""
    options = dict(model_section)
    pretrained = options.pop("pretrained", None)
    options.pop("arch", None)
    model = build_model({"arch": arch, **options}, store.n_classes, store.feature_config.num_mel_bins,
                        store.feature_config.target_frames)
    if request.weights is not None:
        load_weights(model, request.weights, new_head=request.new_head)
    elif pretrained == "imagenet":
        if not request.allow_download:
            raise ValueError("the config asks for ImageNet weights (model.pretrained=imagenet): pass --weights "
                             "PATH (a local timm ImageNet state dict or AST/PSLA checkpoint), or "
                             "--pretrained-from-hub to download them, or override model.pretrained=null")
        load_imagenet_from_hub(model)  # the user asked for the download explicitly
    elif pretrained:
        load_weights(model, Path(pretrained), new_head=request.new_head)
    return model


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed the global RNGs (model initialisation) and, when asked, force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
