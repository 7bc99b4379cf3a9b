"""Dataset profiles: how each known corpus is read and which features and preset it uses by default."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.config import FeatureConfig


@dataclass(frozen=True)
class DatasetProfile:
    name: str
    builder: str  # data_manifests.builders kind, or "demo" for the built-in corpus
    features: FeatureConfig
    preset: str
    builder_options: dict[str, Any] = field(default_factory=dict)
    folds: tuple[int, ...] = ()  # cross-validation folds evaluated by `cmkd` (empty: one train/test split)


PROFILES: dict[str, DatasetProfile] = {
    "demo": DatasetProfile("demo", "demo", FeatureConfig(num_mel_bins=64, target_frames=200), "demo",
                           folds=(1,)),
    "demo-multilabel": DatasetProfile("demo-multilabel", "demo", FeatureConfig(num_mel_bins=64, target_frames=200),
                                      "demo", {"multilabel": True}, folds=(1,)),
    "esc50": DatasetProfile("esc50", "esc50", FeatureConfig(target_frames=512), "esc50", folds=(1, 2, 3, 4, 5)),
    "fsd50k": DatasetProfile("fsd50k", "fsd50k", FeatureConfig(target_frames=1024), "fsd50k"),
    "audioset-balanced": DatasetProfile("audioset-balanced", "audioset", FeatureConfig(target_frames=1024),
                                        "audioset-balanced", {"splits": ["balanced_train", "eval"]}),
    "audioset-full": DatasetProfile("audioset-full", "audioset", FeatureConfig(target_frames=1024),
                                    "audioset-full", {"splits": ["balanced_train", "unbalanced_train", "eval"]}),
}


def get_profile(name: str) -> DatasetProfile:
    if name not in PROFILES:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(PROFILES)} "
                         "(for your own corpus build a manifest with `cmkd-pipe manifest folder|csv|ast-json`)")
    return PROFILES[name]


def fold_overrides(test_fold: int, val_fold: int | None = None) -> list[str]:
    """Config overrides of one cross-validation fold: train on the other folds, test on `test_fold`, and
    validate on `val_fold` (default: the test fold, the AST ESC-50 protocol; a held-out fold is then
    left out of training as well)."""
    val = test_fold if val_fold is None else val_fold
    train = f"fold!={test_fold}" if val == test_fold else f"fold!={test_fold},{val}"
    return [f"data.train={train}", f"data.val=fold=={val}", f"data.test=fold=={test_fold}"]
