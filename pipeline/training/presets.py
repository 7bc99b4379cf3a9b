"""Training presets: one YAML file per recipe in presets/, loaded, overridden and checked here.

A config is a nested dict with exactly the sections in SECTIONS. A value that differs between the two
model families is written as a dict with exactly the keys `cnn` and `ast` (e.g. `optim.lr`, or
`model` itself); `select_arch(config, arch)` replaces every such dict by its arch's value.
Epochs count from 1 as in AST/PSLA: average.wa_start_epoch..wa_end_epoch is inclusive, and
schedule.decay_start_epoch is the number of finished epochs after which the lr first drops.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import PUBLISHED_STATS, apply_overrides
from pipeline.training.schedule import LrSchedule

PRESET_DIR = Path(__file__).with_name("presets")
SECTIONS = ("features", "data", "norm", "model", "optim", "schedule", "train", "augment", "average", "kd", "eval")
ARCHS = ("cnn", "ast")
CHOICES = {
    ("norm", "source"): ("store", "published"),
    ("optim", "name"): ("adam", "adamw"),
    ("eval", "metric"): ("accuracy", "mAP"),
}
POSITIVE = {("optim", "lr"): (int, float), ("data", "batch_size"): int,
            ("features", "target_frames"): int, ("features", "num_mel_bins"): int}


def list_presets() -> list[str]:
    """Names of the shipped presets (file names without .yaml)."""
    return sorted(path.stem for path in PRESET_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    """The YAML file of a shipped preset (`esc50`) or of a user's own (`my.yaml`, a path)."""
    if name.endswith((".yaml", ".yml")):
        path = Path(name)
        if not path.is_file():
            raise ValueError(f"preset file {name}: no such file")
        return path
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown preset {name!r}; choose one of {list_presets()} or give a YAML file (my.yaml)")
    return path


def load_preset(name: str) -> dict[str, Any]:
    """The preset `name` (shipped name or YAML path) as a nested dict, checked with validate_config."""
    path = preset_path(name)
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"preset file {path}: not valid YAML ({str(error).splitlines()[0]})") from None
    validate_config(config, where=str(path))
    return config


def resolve_config(preset: str, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Preset `preset` with dotted `key=value` overrides applied (e.g. 'optim.lr.ast=1e-5'), checked."""
    config = apply_overrides(load_preset(preset), list(overrides))
    validate_config(config, where=f"preset {preset!r} with overrides {list(overrides)}")
    return config


def select_arch(config: dict[str, Any], arch: str) -> dict[str, Any]:
    """Copy of `config` with every {cnn: ..., ast: ...} dict replaced by the value for `arch`."""
    if arch not in ARCHS:
        raise ValueError(f"arch {arch!r}: choose one of {list(ARCHS)}")

    def pick(node: Any) -> Any:
        if isinstance(node, dict):
            if set(node) == set(ARCHS):
                return pick(node[arch])
            return {key: pick(value) for key, value in node.items()}
        return copy.deepcopy(node)

    return pick(config)


def validate_config(config: Any, where: str = "config") -> None:
    """Raise ValueError naming `where` and the field when the config cannot drive a training run."""
    if not isinstance(config, dict):
        raise ValueError(f"{where}: a training config must be a mapping of sections {list(SECTIONS)}")
    missing, extra = set(SECTIONS) - set(config), set(config) - set(SECTIONS)
    if missing or extra:
        raise ValueError(f"{where}: sections must be exactly {list(SECTIONS)}; "
                         f"missing {sorted(missing)}, unknown {sorted(extra)}")
    for section in SECTIONS:
        if not isinstance(config[section], dict):
            raise ValueError(f"{where}: section {section!r} must be a mapping")
    for arch in ARCHS:
        _validate_arch(select_arch(config, arch), f"{where} ({arch})")


def _validate_arch(config: dict[str, Any], where: str) -> None:
    for (section, key), allowed in CHOICES.items():
        value = config[section].get(key)
        if value not in allowed:
            raise ValueError(f"{where}: {section}.{key} = {value!r}; choose one of {list(allowed)}")
    for (section, key), kinds in POSITIVE.items():
        value = config[section].get(key)
        if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
            hint = "; YAML reads 1e-5 as text, write 1.0e-5" if isinstance(value, str) else ""
            raise ValueError(f"{where}: {section}.{key} = {value!r} must be a positive number{hint}")
    norm = config["norm"]
    if norm["source"] == "published" and norm.get("published_stats") not in PUBLISHED_STATS:
        raise ValueError(f"{where}: norm.published_stats = {norm.get('published_stats')!r}; with norm.source "
                         f"'published' choose one of {sorted(PUBLISHED_STATS)}")
    epochs = config["train"].get("epochs")
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"{where}: train.epochs must be an integer >= 1, got {epochs!r}")
    try:
        LrSchedule(steps_per_epoch=1, epochs=epochs, **config["schedule"])
    except TypeError as error:
        raise ValueError(f"{where}: schedule section: {error}") from None
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    start, end = config["average"].get("wa_start_epoch"), config["average"].get("wa_end_epoch")
    if (start is None) != (end is None) or (start is not None and not 1 <= start <= end <= epochs):
        raise ValueError(f"{where}: average.wa_start_epoch/wa_end_epoch = {start}/{end}; need both null "
                         f"(no weight averaging) or 1 <= start <= end <= train.epochs ({epochs})")
