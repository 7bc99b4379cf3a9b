"""Dataset profiles: how each known corpus is read and which features, preset and groups it uses by default."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cmkd_pipe.pipeline.config import FeatureConfig


@dataclass(frozen=True)
class DatasetProfile:
    name: str
    builder: str  # data_manifests.builders kind, or "demo" for the built-in corpus
    features: FeatureConfig
    preset: str
    builder_options: dict[str, Any] = field(default_factory=dict)
    folds: tuple[int, ...] = ()  # test folds evaluated by `cmkd` (empty: one fixed train/val/test split)
    n_folds: int = 0  # folds in the corpus (validation takes the fold after the test fold)
    online_reference: tuple[str, str] | None = None  # (student, teacher): also train it with an online teacher
    kd_forms: tuple[str, ...] = ()  # multi-label: compare these KD forms for the first cross-model direction
    overrides: tuple[str, ...] = ()  # preset settings this corpus needs, applied before the user's


PROFILES: dict[str, DatasetProfile] = {
    "demo": DatasetProfile("demo", "demo", FeatureConfig(num_mel_bins=64, target_frames=200), "demo",
                           folds=(1, 2, 3), n_folds=5, online_reference=("ast", "cnn")),
    "demo-multilabel": DatasetProfile("demo-multilabel", "demo", FeatureConfig(num_mel_bins=64, target_frames=200),
                                      "demo", {"multilabel": True}, folds=(1, 2, 3), n_folds=5,
                                      kd_forms=("softmax-kl", "sigmoid-kl", "bce"),
                                      overrides=("eval.metric=mAP", "kd.form=sigmoid-kl")),
    "esc50": DatasetProfile("esc50", "esc50", FeatureConfig(target_frames=512), "esc50", folds=(1, 2, 3, 4, 5),
                            n_folds=5),
    "fsd50k": DatasetProfile("fsd50k", "fsd50k", FeatureConfig(target_frames=1024), "fsd50k"),
    "audioset-balanced": DatasetProfile("audioset-balanced", "audioset", FeatureConfig(target_frames=1024),
                                        "audioset-balanced", {"splits": ["balanced_train", "eval"]}),
    "audioset-full": DatasetProfile("audioset-full", "audioset", FeatureConfig(target_frames=1024),
                                    "audioset-full", {"splits": ["balanced_train", "unbalanced_train", "eval"]}),
    # your own corpus (DATA_ROOT: the class folders / the labelled CSV file / the AST datafiles' folder), with the
    # CPU-sized preset unless PRESET names another (its features.* settings set the front-end)
    "folder": DatasetProfile("folder", "folder", FeatureConfig(), "cpu-small", folds=(1, 2, 3), n_folds=5),
    "csv": DatasetProfile("csv", "csv", FeatureConfig(), "cpu-small"),
    "ast-json": DatasetProfile("ast-json", "ast-json", FeatureConfig(), "cpu-small"),
}


def get_profile(name: str) -> DatasetProfile:
    if name not in PROFILES:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(PROFILES)} "
                         "(for your own corpus build a manifest with `cmkd-pipe manifest folder|csv|ast-json`)")
    return PROFILES[name]


def fold_overrides(test_fold: int, val_fold: int | None = None) -> list[str]:
    """Data-split overrides for one fold group: test on `test_fold`, validate on `val_fold` (best epoch and
    any selection), train on the rest. `val_fold=None` validates on the test fold itself (the official
    ESC-50 recipe: then the best epoch is chosen on the test fold, and the report says so)."""
    if val_fold is None or val_fold == test_fold:
        return [f"data.train=fold!={test_fold}", f"data.val=fold=={test_fold}", f"data.test=fold=={test_fold}"]
    return [f"data.train=fold!={test_fold}&fold!={val_fold}", f"data.val=fold=={val_fold}",
            f"data.test=fold=={test_fold}"]


def next_fold(fold: int, n_folds: int) -> int:
    """The validation fold of a test fold: the next one, cyclically (fold 5 of 5 validates on fold 1)."""
    return fold % n_folds + 1
