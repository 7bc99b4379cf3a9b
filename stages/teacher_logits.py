"""Teacher-logits stage: a frozen teacher run once over every clip and view of a feature store.

Inputs:  a complete feature store and a teacher checkpoint (pipeline/models/checkpoint.py) trained
         on the same front-end and label vocabulary, or imported for it (`import-teacher`: a label
         map names the output that scores each corpus class it reaches).
Outputs: OUT (logits store, schema cmkd-pipe/logits/2): raw float32 logits [clips, views, classes]
         in the feature store's row order, and each view's parameters (masks, shift, mixup partner
         row and λ). View 0 is the clean fbank; view v > 0 is the input `pipeline.views.ViewBuilder`
         builds for (view seed, clip id, v), exactly what the student replays from the stored parameters. Every input is normalised with the teacher's own normalisation (from its checkpoint).
         Bad clips (ok = false) get the logits of their zero fbank; the student never samples them.
         With a label map, only the mapped classes' logits are kept (attr `class_map`: their corpus
         class indices, one per column).
Resume:  the store's provenance attrs (teacher, checkpoint sha256, views, feature fingerprint,
         vocabulary) must equal this run's, else --overwrite is needed; chunks marked done are
         skipped unless their files no longer match their records (then redone); the store is
         `complete` once every chunk is done. One writer at a time (a lock beside the store).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from torch import nn

from cmkd_pipe.pipeline.augment import MIX_MODES, ViewSpec
from cmkd_pipe.pipeline.config import Normalization
from cmkd_pipe.pipeline.features import normalize
from cmkd_pipe.pipeline.label_map import LabelMap
from cmkd_pipe.pipeline.metrics import summarize
from cmkd_pipe.pipeline.models.checkpoint import (check_compatible, file_sha256, file_stamp, load_checkpoint,
                                                  read_checkpoint)
from cmkd_pipe.pipeline.parallel import run_tasks
from cmkd_pipe.pipeline.predict import model_logits, probabilities, to_device
from cmkd_pipe.pipeline.records import atomic_path
from cmkd_pipe.pipeline.stores import logits_store as ls
from cmkd_pipe.pipeline.stores.chunks import StoreError, chunk_range, open_store, pending_chunks, prepare_output
from cmkd_pipe.pipeline.stores.chunk_cache import ChunkCache
from cmkd_pipe.pipeline.stores.feature_store import FeatureStore
from cmkd_pipe.pipeline.stores.integrity import verify_store
from cmkd_pipe.pipeline.stores.lock import store_lock
from cmkd_pipe.pipeline.views import ViewBuilder


@dataclass(frozen=True)
class ChunkTask:
    out: str
    index: int
    features: str
    feature_fingerprint: str
    checkpoint: str
    checkpoint_sha256: str  # computed once by the driver; workers check checkpoint_stamp instead of rehashing
    checkpoint_stamp: tuple[int, int]
    views: dict
    mix_mode: str
    batch_size: int
    device: str
    generation: str
    columns: tuple[int, ...] | None = None  # the teacher outputs kept (a label map's), None: all


def run_teacher_logits(features: str | os.PathLike, checkpoint: str | os.PathLike, out: str | os.PathLike, *,
                       views: int = 1, view_seed: int = 0, freq_mask: int = 48, time_mask: int = 192,
                       mixup_rate: float = 0.5, mixup_alpha: float = 10.0, time_shift: int = 0, mask_fill: str = "zero",
                       mix_mode: str = "power",
                       chunk_clips: int | None = None, batch_size: int = 32, scheduler: str | None = None,
                       n_workers: int | None = None, device: str | None = None, overwrite: bool = False,
                       progress: bool = True) -> dict[str, Any]:
    """Build or resume the logits store of `checkpoint` over `features`; return a summary dict.

    chunk_clips defaults to the feature store's, so each task reads whole feature chunks. On CUDA
    (bf16 autocast) every task asks for one GPU of its worker (pipeline.parallel), and a LocalCluster has
    one worker per visible GPU (`cuda`; n_workers of them, round robin, if given) or one on GPU N (`cuda:N`).
    """
    features, checkpoint, out = Path(features), Path(checkpoint), Path(out)
    if mix_mode not in MIX_MODES:
        raise ValueError(f"mix mode {mix_mode!r} is unknown; choose one of {', '.join(MIX_MODES)}")
    for name, value in (("batch_size", batch_size), ("chunk_clips", chunk_clips)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    spec = ViewSpec(views, freq_mask, time_mask, mixup_rate, mixup_alpha, view_seed, time_shift, mask_fill)
    device = _device(device)
    store = FeatureStore(features)
    teacher, label_map, stamp = _teacher_provenance(checkpoint, store, mix_mode)
    class_map = None if label_map is None else list(label_map.corpus_classes)
    if out.resolve() == features.resolve():
        raise ValueError(f"--out {out} is the feature store itself; choose another path for the logits store")
    with store_lock(out, "teacher-logits"):
        if prepare_output(out, ls.SCHEMA, overwrite, "teacher-logits"):
            group = ls.open_for_writing(out, ls.provenance(store, teacher, spec.to_dict(), class_map), store)
        else:
            group = ls.create_logits_store(out, store, teacher, spec.to_dict(), chunk_clips or store.chunk_clips,
                                           class_map)
        columns = None if label_map is None else label_map.teacher_columns
        return _run_locked(group, store, out, features, teacher, stamp, spec, mix_mode, batch_size, scheduler,
                           n_workers, device, progress, columns)


def _run_locked(group: zarr.Group, store: FeatureStore, out: Path, features: Path, teacher: dict[str, Any],
                stamp: tuple[int, int], spec: ViewSpec, mix_mode: str, batch_size: int, scheduler: str | None,
                n_workers: int | None, device: str, progress: bool, columns: tuple[int, ...] | None) -> dict[str, Any]:
    device, gpus = gpu_plan(device, n_workers, scheduler)
    chunk = int(group.attrs["chunk_clips"])
    todo = pending_chunks(group)
    tasks = [ChunkTask(str(out.resolve()), i, str(features.resolve()), store.fingerprint, teacher["checkpoint"],
                       teacher["checkpoint_sha256"], stamp, spec.to_dict(), mix_mode, batch_size, device,
                       group.attrs["generation"], columns) for i in todo]
    started = time.perf_counter()
    run_tasks(compute_chunk, tasks, scheduler=scheduler, n_workers=n_workers, gpus=gpus, desc="teacher logits",
              progress=progress)
    seconds = time.perf_counter() - started
    clips_run = sum(stop - start for start, stop in (chunk_range(i, chunk, len(store)) for i in todo))
    if not pending_chunks(group):
        ls.finalize(group)
    return {"store": str(out), "clips": len(store), "chunks": int(group.attrs["n_chunks"]), "chunks_run": len(todo),
            "chunk_clips": chunk, "views": spec.n_views, "complete": bool(group.attrs["complete"]),
            "seconds": seconds, "clips_per_second": clips_run / seconds if clips_run else 0.0}


def _teacher_provenance(checkpoint: Path, store: FeatureStore,
                        mix_mode: str) -> tuple[dict[str, Any], LabelMap | None, tuple[int, int]]:
    """The `teacher` attrs of the store, the checkpoint's label map (None when its labels are the
    store's), after checking the checkpoint fits the feature store, and the file's stamp, taken before
    it is hashed (a change while or after it is hashed shows in the workers)."""
    meta = read_checkpoint(checkpoint)
    stamp = file_stamp(checkpoint)
    try:
        label_map = check_compatible(meta, store.feature_config.to_dict(), store.vocabulary)
    except ValueError as error:
        raise ValueError(f"checkpoint {checkpoint} does not fit the feature store {store.path}: {error}") from None
    teacher = {"arch": meta["model_config"]["arch"], "model_config": meta["model_config"],
               "checkpoint": str(checkpoint.resolve()), "checkpoint_sha256": file_sha256(checkpoint),
               "normalization": Normalization.from_dict(meta["normalization"]).to_dict(),
               "view_mix_mode": mix_mode}
    if label_map is not None:
        teacher["label_map"] = {"by": label_map.by, "n_outputs": label_map.n_teacher,
                                "teacher_columns": list(label_map.teacher_columns),
                                "unmapped_classes": list(label_map.unmapped)}
    if meta.get("extra", {}).get("imported"):
        teacher["imported"] = meta["extra"]["imported"]
    return teacher, label_map, stamp


def gpu_plan(device: str, n_workers: int | None, scheduler: str | None) -> tuple[str, list[int] | None]:
    """(device the tasks use, GPUs of the workers or None for CPU tasks). A LocalCluster started here pins
    each worker to one GPU, so its tasks use `cuda`: one worker per visible GPU (n_workers of them, round
    robin, if given), or one on GPU N for `cuda:N`. On a cluster by address the workers see their own GPU."""
    where = torch.device(device)
    if where.type != "cuda":
        return device, None
    if scheduler is not None:  # in this process, or a cluster whose GPU workers each see their own device
        return device, [where.index or 0]
    if where.index is not None:
        return "cuda", [where.index]
    visible = max(torch.cuda.device_count(), 1)
    return "cuda", [k % visible for k in range(n_workers or visible)]


def _device(device: str | None) -> str:
    """The torch device string the workers use (default: cuda when this machine has it)."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return str(torch.device(device))
    except RuntimeError:
        raise ValueError(f"device {device!r} is not a torch device; use cpu, cuda or cuda:N") from None


# ------------------------------------------------------------------------------ worker side

_TEACHERS: dict[tuple[str, str, str], tuple[nn.Module, Normalization]] = {}
_VIEWS: dict[tuple[Any, ...], tuple[FeatureStore, ViewBuilder]] = {}


def _teacher(path: str, sha256: str, stamp: tuple[int, int], device: str) -> tuple[nn.Module, Normalization]:
    """The teacher in eval mode and its normalisation, loaded once per worker process. The driver hashed
    the file (sha256); a worker only checks that its size and modification time are still those."""
    key = (path, sha256, device)
    if key not in _TEACHERS:
        if file_stamp(path) != tuple(stamp):
            raise StoreError(f"checkpoint {path} changed since this run started (size or modification time "
                             "differs); rerun the stage")
        model, meta = load_checkpoint(path, map_location=device)
        _TEACHERS.clear()  # a long-lived worker keeps only the current teacher
        _TEACHERS[key] = (model.eval().requires_grad_(False), Normalization.from_dict(meta["normalization"]))
    return _TEACHERS[key]


def _view_builder(task: ChunkTask) -> tuple[FeatureStore, ViewBuilder]:
    """The feature store and its view builder, opened once per worker process."""
    key = (task.features, task.feature_fingerprint, tuple(sorted(task.views.items())), task.mix_mode)
    if key not in _VIEWS:
        store = FeatureStore(task.features)
        if store.fingerprint != task.feature_fingerprint:
            raise StoreError(f"{task.features}: feature store changed since this run started; rerun the stage")
        builder = ViewBuilder(store, ViewSpec.from_dict(task.views), ChunkCache(store.fbank, store.chunk_clips),
                              task.mix_mode)
        _VIEWS.clear()
        _VIEWS[key] = (store, builder)
    return _VIEWS[key]


def compute_chunk(task: ChunkTask) -> int:
    """Teacher logits of every view of one chunk's clips, written with the done marker last (a Dask task)."""
    device = torch.device(task.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    model, norm = _teacher(task.checkpoint, task.checkpoint_sha256, task.checkpoint_stamp, task.device)
    store, builder = _view_builder(task)
    group = zarr.open_group(store=task.out, mode="r+")
    if group.attrs.get("schema") != ls.SCHEMA:
        raise StoreError(f"{task.out}: not a logits store")
    start, stop = chunk_range(task.index, int(group.attrs["chunk_clips"]), int(group.attrs["n_clips"]))
    rows = np.arange(start, stop)
    x = store.read(rows)  # float16, cast to float32 where the model runs (views: in the builder)
    columns = None if task.columns is None else torch.tensor(task.columns, device=device)
    width = store.n_classes if columns is None else len(columns)
    n_views = builder.spec.n_views
    logits = np.empty((len(rows), n_views, width), dtype=np.float32)
    tables = [builder.draw_table(rows, np.full(len(rows), view)) for view in range(n_views)]
    for view, table in enumerate(tables):
        for first in range(0, len(rows), task.batch_size):
            part = slice(first, first + task.batch_size)
            inputs = x[part] if view == 0 else builder.inputs(rows[part], x[part], table.select(part))
            out = model_logits(model, normalize(to_device(inputs, device), norm))
            logits[part, view] = (out if columns is None else out[:, columns]).cpu().numpy()
    views = tuple(np.stack([getattr(table, name) for table in tables], axis=1) for name in ("bands", "partner", "lam"))
    ls.write_chunk(group, task.index, logits, task.generation, views)  # [clips, views, ...]
    return task.index


# ------------------------------------------------------------------------------ inspection

def inspect_logits(store: str | os.PathLike, features: str | os.PathLike | None = None,
                   png: str | os.PathLike | None = None) -> dict[str, Any]:
    """Completeness, integrity (`problems`: every chunk file checked against its sha256 record; the
    store counts as complete only when there are none) and provenance of a logits store; with its feature store (default: the path in
    its attrs; pass a moved one explicitly) also the teacher's metrics per split from the view-0
    logits, and with `png` histograms of per-clip prediction entropy and confidence per split."""
    group = open_store(store, ls.SCHEMA)
    attrs = group.attrs.asdict()
    teacher = attrs["teacher"]
    problems = verify_store(store)
    result: dict[str, Any] = {
        "store": str(store), "complete": bool(attrs["complete"]) and not problems, "problems": problems,
        "chunks_done": int(np.asarray(group["chunk_done"][:]).sum()), "chunks": int(attrs["n_chunks"]),
        "clips": int(attrs["n_clips"]),
        "teacher": {k: teacher[k] for k in ("arch", "checkpoint", "checkpoint_sha256", "normalization",
                                            "view_mix_mode")},
        "views": attrs["views"], "feature_fingerprint": attrs["feature_fingerprint"],
        "feature_store": attrs["feature_store"], "created": attrs["created"], "code_version": attrs["code_version"],
        "metrics": None,
    }
    feature_path = Path(features) if features is not None else Path(attrs["feature_store"])
    skip = None
    if problems:
        skip = f"the store is damaged or incomplete ({problems[0]}); rerun teacher-logits to redo those chunks"
    elif features is None and not (feature_path / "zarr.json").is_file():
        skip = f"feature store {feature_path} not found; pass --features with its new path"
    if skip:
        if png is not None:
            raise StoreError(f"{store}: cannot plot: {skip}")
        result["metrics_skipped"] = skip
        return result
    feature_store = FeatureStore(feature_path)
    logits = ls.LogitsStore(store)
    logits.check_matches(feature_store)
    clean = torch.from_numpy(np.asarray(logits.logits[:, 0], dtype=np.float32))
    probs, entropy = _probabilities_and_entropy(clean, feature_store.multilabel)
    confidence = probs.max(axis=1)
    targets = feature_store.targets if logits.class_map is None else feature_store.targets[:, logits.class_map]
    if logits.class_map is not None:
        result["class_map"] = {"mapped": len(logits.class_map), "classes": feature_store.n_classes}
    splits = {str(s): feature_store.select(str(s)) for s in dict.fromkeys(feature_store.splits)}
    if not feature_store.multilabel:  # single-label: only clips of a class the teacher scores count
        splits = {name: rows[targets[rows].any(axis=1)] for name, rows in splits.items()}
    splits = {name: rows for name, rows in splits.items() if len(rows)}
    result["metrics"] = {
        name: {"n_clips": int(len(rows)),
               **{k: v for k, v in summarize(probs[rows], targets[rows],
                                             feature_store.multilabel).items() if not isinstance(v, list)},
               "mean_entropy": float(entropy[rows].mean()), "mean_confidence": float(confidence[rows].mean())}
        for name, rows in splits.items()}
    if png is not None:
        max_entropy = math.log(2) if feature_store.multilabel else math.log(logits.n_columns)
        result["png"] = str(_plot(Path(png), splits, entropy, confidence, max_entropy, feature_store.multilabel))
    return result


def _probabilities_and_entropy(logits: torch.Tensor, multilabel: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-clip probabilities and prediction entropy in nats (multi-label: mean Bernoulli entropy per class)."""
    probs = probabilities(logits, multilabel)
    if multilabel:
        entropy = -(probs * nn.functional.logsigmoid(logits)
                    + (1 - probs) * nn.functional.logsigmoid(-logits)).mean(dim=1)
    else:
        entropy = -(probs * torch.log_softmax(logits, dim=1)).sum(dim=1)
    return probs.numpy(), entropy.numpy()


def _plot(path: Path, splits: dict[str, np.ndarray], entropy: np.ndarray, confidence: np.ndarray,
          max_entropy: float, multilabel: bool) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4), layout="constrained")
    FigureCanvasAgg(figure)
    panels = [("mean per-class entropy (nats)" if multilabel else "entropy (nats)", entropy,
               max(max_entropy, float(entropy.max()))),  # rounding can pass the bound by an ulp
              ("max class probability", confidence, 1.0)]
    for position, (title, values, top) in enumerate(panels, start=1):
        axes = figure.add_subplot(1, 2, position)
        bins = np.linspace(0.0, top, 31)
        for name, rows in splits.items():
            axes.hist(values[rows], bins=bins, histtype="step", linewidth=1.5, label=f"{name} ({len(rows)})")
        axes.set_xlabel(title)
        axes.set_ylabel("clips")
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    figure.suptitle("teacher predictions on clean inputs (view 0)")
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    return path
