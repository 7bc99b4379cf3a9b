"""Import-teacher stage: a published checkpoint turned into a teacher checkpoint for a feature store, untrained.

Inputs:  WEIGHTS (an official AST release, a Hugging Face AST folder, a PSLA EfficientNet or one of our
         own checkpoints: pipeline/models/published.py), a complete feature store, optionally a labels
         CSV (index,mid,display_name) naming the outputs of a file that does not name them.
Outputs: OUT, a checkpoint (pipeline/models/checkpoint.py) that `teacher-logits` accepts: the source's
         architecture built for the store's input (AST positions adapted in time, as `load_weights`
         does), its weights and head as published; the store's front-end, which must match the one
         the weights expect (sample rate, mel bins, frame shift and length); normalisation = the
         statistics published with the source when known (pipeline.models.published), else the store's
         with the recipe's divisor; vocabulary = the teacher's labels; and, when they differ from the
         corpus's, a label map by AudioSet mid (or display name) onto the corpus classes. Corpus classes
         the teacher has no label for are refused, listed, unless `allow_unmapped`.
         extra.imported records the source file and its sha256, the format, where the labels and the
         normalisation came from and the map's coverage.
Resume:  none needed: one atomic write; a rerun rewrites OUT.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cmkd_pipe.pipeline.config import Normalization, apply_overrides
from cmkd_pipe.pipeline.label_map import LabelMap, map_labels, read_labels_csv, same_labels
from cmkd_pipe.pipeline.models.checkpoint import file_sha256, save_checkpoint
from cmkd_pipe.pipeline.models.factory import build_model
from cmkd_pipe.pipeline.models.published import PublishedSource, describe_source
from cmkd_pipe.pipeline.models.registry import family_of_arch
from cmkd_pipe.pipeline.models.weights import load_weights
from cmkd_pipe.pipeline.stores.feature_store import FeatureStore

NORM_SOURCES = ("published", "store")


def run_import_teacher(weights: str | os.PathLike, features: str | os.PathLike, out: str | os.PathLike, *,
                       family: str | None = None, overrides: list[str] | tuple[str, ...] = (),
                       labels: str | os.PathLike | None = None, allow_unmapped: bool = False,
                       preset: str | None = None, preset_overrides: list[str] | None = None) -> dict[str, Any]:
    """Write the teacher checkpoint OUT for `features` from `weights`; return a summary.

    `overrides`: `model.<family>.<option>=value` (architecture options the files do not tell, e.g. an
    official AST's num_heads) and `norm.source=published|store`. `preset` (+ its overrides) is recorded
    for `train-student`'s defaults; it does not change the teacher."""
    weights, features, out = Path(weights), Path(features), Path(out)
    store = FeatureStore(features)
    settings = apply_overrides({}, list(overrides))
    unknown = sorted(set(settings) - {"model", "norm"}) + sorted(f"norm.{k}" for k in settings.get("norm", {})
                                                                 if k != "source")
    if unknown:
        raise ValueError(f"import-teacher --set: unknown key {unknown[0]}; known: model.<family>.<option>, norm.source")
    norm_source = settings.get("norm", {}).get("source", "published")
    if norm_source not in NORM_SOURCES:
        raise ValueError(f"import-teacher --set norm.source={norm_source!r}: choose one of {', '.join(NORM_SOURCES)}")
    model_options = settings.get("model", {})
    if len(model_options) > 1 or not all(isinstance(v, dict) for v in model_options.values()):
        raise ValueError("import-teacher --set model.…: give options of one family, as model.<family>.<option>=value")
    given, options = next(iter(model_options.items()), (None, {}))
    source = describe_source(weights, options)
    detected = family_of_arch(source.model_config["arch"]).name
    for flag, name in (("--model", family), ("--set model.", given)):
        if name is not None and family_of_arch(name).name != detected:
            raise ValueError(f"{weights}: holds {detected} weights ({source.format}), not {flag}{name}")
    _check_front_end(source, store)
    teacher_labels, labels_from = _teacher_labels(source, labels)
    label_map = None if same_labels(teacher_labels, store.vocabulary) else map_labels(teacher_labels,
                                                                                       store.vocabulary)
    _check_coverage(label_map, store, weights, allow_unmapped)
    model = build_model(source.model_config, source.n_outputs, store.feature_config.num_mel_bins,
                        store.feature_config.target_frames)
    fmt = load_weights(model, weights)
    normalization, norm_from = _normalization(source, store, norm_source)
    imported = {"source": str(source.weights_file.resolve()), "sha256": file_sha256(source.weights_file),
                "format": source.format, "labels": labels_from, "normalization": norm_from,
                "mapped": _coverage(label_map, store)}
    if source.config_file is not None:
        imported.update(config=str(source.config_file.resolve()), config_sha256=file_sha256(source.config_file))
    extra = {"arch": model.config["arch"], "feature_store": str(features.resolve()),
             "feature_fingerprint": store.fingerprint, "multilabel": store.multilabel, "imported": imported}
    if preset:
        extra.update(preset=preset, overrides=list(preset_overrides or []))
    save_checkpoint(out, model, feature_config=store.feature_config.to_dict(), normalization=normalization,
                    vocabulary=teacher_labels, extra=extra, label_map=label_map)
    return {"checkpoint": str(out), "format": fmt, "family": detected, "model_config": model.config,
            "outputs": source.n_outputs, "normalization": {**normalization, "from": norm_from},
            "labels": labels_from, "mapped": imported["mapped"],
            "unmapped": [] if label_map is None else [store.vocabulary[c]["id"] for c in label_map.unmapped]}


def _check_front_end(source: PublishedSource, store: FeatureStore) -> None:
    """The store's features must be what the weights were trained on (the input length may differ)."""
    have = store.feature_config.to_dict()
    differ = [f"{key} {have[key]!r} (the weights expect {value!r})" for key, value in source.front_end.items()
              if key in have and have[key] != value]
    if differ:
        raise ValueError(f"{store.path}: features do not match {source.path}: {'; '.join(differ)}; build a feature "
                         "store with the teacher's front-end (`cmkd-pipe features` options)")


def _teacher_labels(source: PublishedSource, labels: str | os.PathLike | None) -> tuple[list[dict], str]:
    """The teacher's label records and where they came from (--labels wins over the file's own)."""
    if labels is not None:
        records, found = read_labels_csv(labels), f"--labels {Path(labels).resolve()}"
    elif source.labels is not None:
        records, found = source.labels, source.labels_from or "the weights"
    else:
        raise ValueError(f"{source.path}: the file does not name its {source.n_outputs} output labels; pass --labels "
                         "CSV (index,mid,display_name: AudioSet's class_labels_indices.csv for AudioSet models)")
    if len(records) != source.n_outputs:
        raise ValueError(f"{found}: {len(records)} labels, but {source.path} has {source.n_outputs} outputs; "
                         "give the labels of this checkpoint")
    return records, found


def _check_coverage(label_map: LabelMap | None, store: FeatureStore, weights: Path, allow_unmapped: bool) -> None:
    if label_map is None:
        return
    if not label_map.corpus_classes:
        raise ValueError(f"{weights}: no corpus class of {store.path} matches a teacher label (by {label_map.by}); "
                         "check --labels: their mids must be the corpus vocabulary's ids")
    if label_map.unmapped and not allow_unmapped:
        raise ValueError(f"{weights}: {label_map.describe_unmapped(store.vocabulary)}; pass --allow-unmapped to "
                         "distil only the mapped classes (the task loss still covers all)")


def _coverage(label_map: LabelMap | None, store: FeatureStore) -> str:
    if label_map is None:
        return f"all {store.n_classes} classes (same labels)"
    return f"{len(label_map.corpus_classes)} of {store.n_classes} corpus classes, by {label_map.by}"


def _normalization(source: PublishedSource, store: FeatureStore, wanted: str) -> tuple[dict[str, float], str]:
    """The source's published statistics when known (and wanted), else the store's with the recipe's divisor."""
    if wanted == "published" and source.normalization is not None:
        return Normalization.from_dict(source.normalization).to_dict(), source.normalization_from or "published"
    norm = store.normalization(source.divisor).to_dict()
    reason = "asked for" if wanted == "store" else "the source publishes none"
    return norm, f"the feature store's mean/std ({reason}), divisor {source.divisor:g}"
