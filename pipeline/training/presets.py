"""Training presets: one YAML file per recipe in presets/, loaded, overridden and checked here.

A config is a nested dict with the sections and fields of pipeline.training.schema (missing fields
take their defaults; unknown ones are refused in one line naming the key and the known ones). The
`model` section is `{<family>: {...}}`: the model families (pipeline.models.registry) this config
trains, in order. A value that differs between families is a dict keyed by those family names (e.g.
`optim.lr: {cnn: .., ast: ..}`); `select_family(config, name)` keeps only `name` in `model` and
replaces every such dict by the value of `name`. A family missing from a preset is added with
overrides (`model.NAME.arch=NAME`, plus a value for every per-family dict, e.g. `optim.lr.NAME=1.0e-3`).
Epochs count from 1 as in AST/PSLA: average.wa_start_epoch..wa_end_epoch is inclusive, and
schedule.decay_start_epoch is the number of finished epochs after which the lr first drops.
"""
from __future__ import annotations

import copy
import dataclasses
import typing
from pathlib import Path
from typing import Any

import yaml

from cmkd_pipe.pipeline.config import PUBLISHED_STATS, apply_overrides, check_fields, check_type, typed_from_dict
from cmkd_pipe.pipeline.models.registry import configured_families, family_names, get_family
from cmkd_pipe.pipeline.stores.codecs import CODECS
from cmkd_pipe.pipeline.training import schema
from cmkd_pipe.pipeline.training.schedule import LrSchedule

PRESET_DIR = Path(__file__).with_name("presets")
SECTIONS = tuple(schema.SECTIONS)
CHOICES = {
    ("norm", "source"): ("store", "published"),
    ("optim", "name"): ("adam", "adamw"),
    ("eval", "metric"): ("accuracy", "mAP"),
    ("features", "codec"): tuple(CODECS),
}
POSITIVE = {("optim", "lr"): (int, float), ("data", "batch_size"): int, ("data", "prefetch"): int,
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
    """The preset `name` (shipped name or YAML path) as a nested dict, checked and completed with validate_config."""
    path = preset_path(name)
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"preset file {path}: not valid YAML ({str(error).splitlines()[0]})") from None
    return validate_config(config, where=f"preset {name!r}")


def resolve_config(preset: str, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Preset `preset` with dotted `key=value` overrides applied (e.g. 'optim.lr.ast=1e-5'), checked."""
    config = apply_overrides(load_preset(preset), list(overrides))
    where = f"preset {preset!r}" + (f" with --set {' '.join(overrides)}" if overrides else "")
    return validate_config(config, where=where)


def select_family(config: dict[str, Any], name: str) -> dict[str, Any]:
    """Copy of `config` for the model family `name`: `model` keeps only `name`'s section and every
    per-family dict becomes its value. The result is a config declaring one family (selecting it again
    changes nothing), and its `model[name]` holds the family's options."""
    get_family(name)  # an unregistered name fails here, listing the registered ones
    families = configured_families(config)
    if name not in families:
        raise ValueError(f"model family {name!r} is not in the config's model section ({', '.join(families)}); "
                         f"add it with --set model.{name}.arch={name}")
    out: dict[str, Any] = {}
    for section, values in config.items():
        if section == "model":
            out[section] = {name: copy.deepcopy(values[name])}
            continue
        if not isinstance(values, dict):  # e.g. a baseline's kd: null, as the stage graph writes it
            out[section] = copy.deepcopy(values)
            continue
        out[section] = {}
        for key, value in values.items():
            if isinstance(value, dict):
                if name not in value:
                    raise ValueError(f"{section}.{key} has no value for model family {name!r}; "
                                     f"add one with --set {section}.{key}.{name}=VALUE")
                value = value[name]
            out[section][key] = copy.deepcopy(value)
    return out


def validate_config(config: Any, where: str = "config") -> dict[str, Any]:
    """The config checked against the schema and for every declared family, missing fields filled with
    their defaults; ValueError naming `where` and the field otherwise."""
    if not isinstance(config, dict):
        raise ValueError(f"{where}: a training config must be a mapping of sections {list(SECTIONS)}")
    for section, values in config.items():
        if section not in schema.SECTIONS:
            raise ValueError(f"{where}: unknown section {section}; known sections: {', '.join(SECTIONS)}")
        if not isinstance(values, dict):
            raise ValueError(f"{where}: section {section!r} must be a mapping")
    families = list(config.get("model") or {})
    if not families:
        raise ValueError(f"{where}: the model section declares no model family; registered: "
                         f"{', '.join(family_names())}")
    complete = {}
    for section, section_schema in schema.SECTIONS.items():
        values = config.get(section, {})
        if section_schema is None:
            complete[section] = {name: _checked_model(name, values[name], where) for name in families}
        else:
            complete[section] = _checked_section(section, section_schema, values, families, where)
    for name in families:
        try:
            selected = select_family(complete, name)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
        _validate_family(selected, f"{where} ({name})")
    return complete


def _checked_model(name: str, options: Any, where: str) -> dict[str, Any]:
    """A `model.<name>` section: the family's options plus pretrained, typed and checked."""
    if name not in family_names():
        raise ValueError(f"{where}: unknown key model.{name}; known keys in model (registered model families): "
                         f"{', '.join(family_names())}")
    family = get_family(name)
    if not isinstance(options, dict):
        raise ValueError(f"{where}: model.{name} must be a mapping of {family.display_name} options")
    prefix = f"model.{name}."
    check_fields((family.config, schema.ModelExtras), options, where, prefix)
    arch = options.get("arch", name)
    if not family.owns(arch):
        raise ValueError(f"{where}: {prefix}arch = {arch!r} is not a {name} architecture "
                         f"({name} owns {', '.join(a.replace('?*', 'NAME') for a in family.archs)})")
    extras = {f.name for f in dataclasses.fields(schema.ModelExtras)}
    model_options = {k: v for k, v in options.items() if k not in extras}
    try:
        typed_from_dict(family.config, {**model_options, "arch": arch}, where, prefix)
    except ValueError as error:
        raise ValueError(f"{where}: {prefix.rstrip('.')}: {error}") from None
    return copy.deepcopy(options)


def _checked_section(section: str, section_schema: type, values: dict[str, Any], families: list[str],
                     where: str) -> dict[str, Any]:
    """A section's values typed and checked (per-family dicts value by value), defaults filled in."""
    hints = typing.get_type_hints(section_schema)
    for key, value in values.items():
        if not isinstance(value, dict):
            check_fields(section_schema, {key: value}, where, f"{section}.")
            continue
        check_fields(section_schema, {key: None} if key not in hints else {}, where, f"{section}.")
        foreign = [name for name in value if name not in families]
        if foreign:
            raise ValueError(f"{where}: {section}.{key} has values for {foreign}, which are not model families "
                             f"of this config's model section ({', '.join(families)})")
        for name, one in value.items():
            check_type(one, hints[key], where, f"{section}.{key}.{name}")
    complete = {}
    for spec in dataclasses.fields(section_schema):
        default = spec.default_factory() if spec.default is dataclasses.MISSING else spec.default
        complete[spec.name] = copy.deepcopy(values.get(spec.name, default))
    return complete


def _validate_family(config: dict[str, Any], where: str) -> None:
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
    workers = config["data"].get("loader_workers")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 0):
        raise ValueError(f"{where}: data.loader_workers = {workers!r} must be null (automatic) or an integer >= 0 "
                         "(0: no worker processes)")
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
