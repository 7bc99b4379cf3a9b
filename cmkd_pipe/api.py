"""The Python API: each stage as one typed function, and `load_model` for tagging with a trained model.

Every function here calls the same stage function the CLI command of the same name calls, with the
same defaults; nothing is computed here.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

from cmkd_pipe.pipeline.config import FeatureConfig
from cmkd_pipe.pipeline.inference import ClipTags, Tagger, load_scorer
from cmkd_pipe.pipeline.stores.codecs import DEFAULT_CODEC
from cmkd_pipe.stages.export import run_export
from cmkd_pipe.stages.features import run_features
from cmkd_pipe.stages.report import build_report
from cmkd_pipe.stages.tag import TagRun, run_tag
from cmkd_pipe.stages.teacher_logits import run_teacher_logits
from cmkd_pipe.stages.train import train as run_training

PathLike = str | os.PathLike

__all__ = ["ClipTags", "FeatureConfig", "Tagger", "TagRun", "export", "features", "load_model", "report", "tag", "teacher_logits",
           "train", "train_student"]


def load_model(model: PathLike, *, hop: int | None = None, pool: str = "mean", batch_size: int = 16,
               device: str | None = None, multilabel: bool | None = None) -> Tagger:
    """A tagger for a checkpoint (final.pt) or an exported ONNX model (folder or model.onnx).

    `load_model(p).tag("x.wav")` -> ClipTags (`.top(k)`, `.timeline(k)`, `.scores`, `.window_scores`).
    Windows are the model's input length, `hop` frames apart (default half a window); the clip score is
    the `pool` ("mean" | "max") of the window scores (sigmoid if multi-label, else softmax).
    """
    return Tagger(load_scorer(model, device=device, multilabel=multilabel), hop=hop, pool=pool,
                  batch_size=batch_size)


def features(manifest: PathLike, out: PathLike, *, config: FeatureConfig | None = None, chunk_clips: int = 64,
             scheduler: str | None = None, workers: int | None = None, max_bad_fraction: float = 0.05,
             codec: str = DEFAULT_CODEC, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Kaldi fbank of every clip of a manifest folder into a feature store (resumable); a summary dict.
    `codec`: how a new store's fbank is compressed (pipeline.stores.codecs)."""
    return run_features(manifest, out, config=config or FeatureConfig(), chunk_clips=chunk_clips,
                        scheduler=scheduler, n_workers=workers, max_bad_fraction=max_bad_fraction,
                        codec=codec, overwrite=overwrite, progress=progress)


def train(features: PathLike, out: PathLike, *, model: str = "cnn", preset: str = "demo",
          overrides: list[str] | None = None, resume: bool = False, weights: PathLike | None = None,
          new_head: bool = False, device: str | None = None, pretrained_from_hub: bool = False,
          progress: bool = True) -> dict[str, Any]:
    """Train a teacher or baseline (`model`: cnn | ast | timm:NAME) on a feature store; its results dict.

    `overrides` are dotted settings as with `--set` (e.g. ["train.epochs=3"]); OUT/final.pt is the model.
    """
    return run_training(features, model, out, preset=preset, overrides=list(overrides or []), resume=resume,
                        weights=str(weights) if weights else None, new_head=new_head, device=device,
                        allow_download=pretrained_from_hub, progress=progress,
                        extra=_provenance(features, overrides))


def teacher_logits(checkpoint: PathLike, out: PathLike, *, features: PathLike | None = None, views: int = 1,
                   batch_size: int = 32, scheduler: str | None = None, workers: int | None = None,
                   device: str | None = None, overwrite: bool = False, progress: bool = True,
                   **view_options: Any) -> dict[str, Any]:
    """Cache a teacher's logits over a feature store (default: the one it was trained on); a summary dict.

    `view_options`: view_seed, freq_mask, time_mask, mixup_rate, mixup_alpha, time_shift, mask_fill, mix_mode, chunk_clips
    (as `cmkd-pipe teacher-logits`).
    """
    if features is None:
        from cmkd_pipe.pipeline.models.checkpoint import read_checkpoint

        features = read_checkpoint(checkpoint).get("extra", {}).get("feature_store")
        if not features:
            raise ValueError(f"{checkpoint}: the checkpoint does not record its feature store; pass features=")
    return run_teacher_logits(features, checkpoint, out, views=views, batch_size=batch_size, scheduler=scheduler,
                              n_workers=workers, device=device, overwrite=overwrite, progress=progress,
                              **view_options)


def train_student(logits: PathLike, *, out: PathLike | None = None, model: str | None = None,
                  features: PathLike | None = None, preset: str | None = None, overrides: list[str] | None = None,
                  resume: bool = False, device: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Train a student against cached teacher logits; every default (features, recipe, the other model
    family, run folder beside the store) comes from the store's provenance, as `cmkd-pipe train-student`."""
    from cmkd_pipe.pipeline.training.student_defaults import student_defaults

    defaults = student_defaults(Path(logits), None)
    model = model or defaults.model
    chosen = list(defaults.overrides) if preset is None else []
    overrides = chosen + list(overrides or [])
    features = features or defaults.features
    out = out or defaults.out.with_name(f"student-{model}-from-{defaults.teacher_family}")
    return run_training(features, model, out, preset=preset or defaults.preset, overrides=overrides,
                        resume=resume, logits=str(logits), device=device, progress=progress,
                        extra=_provenance(features, overrides))


def report(run_dir: PathLike, out: PathLike | None = None) -> dict[str, Any]:
    """Collect the runs under `run_dir` into the report (tables with ± over groups, plots); its data."""
    return build_report(run_dir, out)


def tag(paths: PathLike | Iterable[PathLike], model: PathLike, **options: Any) -> TagRun:
    """Tag files, folders or manifest folders; bad files are skipped and listed in `.failed`.

    `options` as `stages.tag.run_tag`: hop, pool, top_k, batch_size, device, multilabel, json_out, csv_out,
    timeline_out, progress.
    """
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    return run_tag(items, model, **options)


def export(checkpoint: PathLike, out: PathLike, *, fmt: str = "onnx", multilabel: bool | None = None,
           overwrite: bool = False) -> dict[str, Any]:
    """Export a checkpoint with its front end (waveform -> logits, fbank -> logits) to `out`; a summary."""
    return run_export(checkpoint, out, fmt=fmt, multilabel=multilabel, overwrite=overwrite)


def _provenance(features: PathLike, overrides: list[str] | None) -> dict[str, Any]:
    """What the CLI records in a checkpoint's `extra`, so later stages find their defaults."""
    return {"overrides": list(overrides or []), "feature_store": str(Path(features).resolve())}
