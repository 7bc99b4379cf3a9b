"""Our checkpoint file: weights plus everything needed to rebuild and use the model safely.

A torch file holding {"format": FORMAT, "model_config", "n_classes", "n_mels", "n_frames",
"feature_config", "normalization", "vocabulary", "code_version", "state_dict", "extra"} and, for a
teacher imported for a corpus with other labels (`cmkd-pipe import-teacher`), "label_map"
(pipeline.label_map.LabelMap: which output scores which corpus class); it loads with
`torch.load(weights_only=True)`. `check_compatible` refuses a front-end or label set other than the one
the model was trained on, unless a label map recorded for exactly that corpus vocabulary bridges them.
"""
from __future__ import annotations

import hashlib
import itertools
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cmkd_pipe.pipeline.config import FeatureConfig, Normalization
from cmkd_pipe.pipeline.label_map import LabelMap, same_labels, vocabulary_hash
from cmkd_pipe.pipeline.models.factory import build_model
from cmkd_pipe.pipeline.models.weights import load_strict
from cmkd_pipe.pipeline.records import torch_save_atomic
from cmkd_pipe.pipeline.version import code_version

FORMAT = "cmkd-pipe/checkpoint/1"


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside DistributedDataParallel/DataParallel and torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model


def save_checkpoint(path: str | os.PathLike, model: nn.Module, *, feature_config: dict[str, Any],
                    normalization: dict[str, float], vocabulary: list[dict], extra: dict | None = None,
                    label_map: LabelMap | None = None) -> Path:
    """Write the checkpoint atomically (pipeline.records.torch_save_atomic); `vocabulary` names the model's
    outputs, `label_map` (an imported teacher) maps them onto a corpus vocabulary."""
    path = Path(path)
    model = unwrap_model(model)
    features = FeatureConfig.from_dict(feature_config)  # validates the fields
    if len(vocabulary) != model.n_classes:
        raise ValueError(
            f"save_checkpoint {path}: vocabulary has {len(vocabulary)} labels, the model {model.n_classes} outputs"
        )
    if features.num_mel_bins != model.n_mels or features.target_frames != model.input_frames:
        raise ValueError(
            f"save_checkpoint {path}: feature config ({features.target_frames} frames x {features.num_mel_bins} bins) "
            f"differs from the model input ({model.input_frames} x {model.n_mels})"
        )
    payload = {
        "format": FORMAT,
        "model_config": dict(model.config),
        "n_classes": model.n_classes,
        "n_mels": model.n_mels,
        "n_frames": model.input_frames,
        "feature_config": features.to_dict(),
        "normalization": Normalization.from_dict(normalization).to_dict(),
        "vocabulary": [dict(record) for record in vocabulary],
        "code_version": code_version(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": extra or {},
    }
    if label_map is not None:
        if label_map.n_teacher != model.n_classes:
            raise ValueError(f"save_checkpoint {path}: label map for {label_map.n_teacher} outputs, the model has "
                             f"{model.n_classes}")
        payload["label_map"] = label_map.to_dict()
    torch_save_atomic(path, payload)
    return path


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The raw checkpoint dict, after checking it is one of ours."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path}: no such file")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same message
        raise ValueError(f"checkpoint {path}: cannot read as a torch file ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ValueError(
            f"checkpoint {path}: not a cmkd-pipe checkpoint (format {found!r}, expected {FORMAT!r}); "
            "turn published weights into a teacher with `cmkd-pipe import-teacher WEIGHTS --features STORE --out "
            "teacher.pt`, or start training from them with `cmkd-pipe train --weights`"
        )
    return data


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """(model rebuilt from its config with the weights loaded strictly, metadata without state_dict).

    The model is built on the meta device, so no random initialisation is computed and thrown away, and
    takes the checkpoint's tensors; a model with state the checkpoint does not hold (non-persistent
    buffers, e.g. timm's blur-pool filters) is built for real and loaded by copy."""
    data = read_checkpoint(path, map_location)
    shape = (data["model_config"], data["n_classes"], data["n_mels"], data["n_frames"])
    with torch.device("meta"):
        model = build_model(*shape)
    load_strict(model, data["state_dict"], source=f"checkpoint {path}", assign=True)
    if any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers())):
        model = build_model(*shape)
        load_strict(model, data["state_dict"], source=f"checkpoint {path}")
    model.to(map_location)
    meta = {k: v for k, v in data.items() if k != "state_dict"}
    return model, meta


def check_compatible(meta: dict, feature_config: dict[str, Any], vocabulary: list[dict]) -> LabelMap | None:
    """Raise ValueError naming what differs between a checkpoint's front-end/labels and the data's. Returns
    None when the labels are the data's, or the checkpoint's label map when it was imported for them."""
    problems = FeatureConfig.from_dict(meta["feature_config"]).differences(FeatureConfig.from_dict(feature_config))
    if problems:
        raise ValueError(f"checkpoint and data use different features: {'; '.join(problems)} (checkpoint != data)")
    ours, theirs = meta["vocabulary"], vocabulary
    if same_labels(ours, theirs):
        return None
    if meta.get("label_map"):
        label_map = LabelMap.from_dict(meta["label_map"])
        if label_map.corpus_vocabulary_hash == vocabulary_hash(theirs):
            return label_map
        raise ValueError(f"the teacher was imported for another label vocabulary (hash "
                         f"{label_map.corpus_vocabulary_hash}, the data's {vocabulary_hash(theirs)}); import it "
                         "again with `cmkd-pipe import-teacher WEIGHTS --features` for this feature store")
    hint = "; a published teacher with other labels is mapped by `cmkd-pipe import-teacher`"
    if len(ours) != len(theirs):
        raise ValueError(f"checkpoint has {len(ours)} labels, the data {len(theirs)}{hint}")
    for i, (a, b) in enumerate(zip(ours, theirs)):
        if (str(a["id"]), str(a["name"])) != (str(b["id"]), str(b["name"])):
            raise ValueError(
                f"label {i} differs: checkpoint {a['id']!r} ({a['name']}) vs data {b['id']!r} ({b['name']}){hint}"
            )
    return None


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_stamp(path: str | os.PathLike) -> tuple[int, int]:
    """(size, modification time in ns): a cheap check that a file is still the one hashed earlier."""
    info = os.stat(path)
    return info.st_size, info.st_mtime_ns
