"""Typed configuration pieces shared by every stage: front-end, normalisation, dotted overrides."""
from __future__ import annotations

import copy
import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml


@dataclass(frozen=True)
class FeatureConfig:
    """Kaldi log-mel fbank front-end, defaults as the AST/PSLA loaders call it."""

    sample_rate: int = 16000
    num_mel_bins: int = 128
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    window_type: str = "hanning"
    dither: float = 0.0
    remove_dc: bool = True  # subtract the clip mean before fbank (AST/PSLA)
    target_frames: int = 1024  # pad with zeros / trim the tail to this many frames

    @property
    def window_samples(self) -> int:
        """Samples per analysis frame (Kaldi truncates: 400 at 16 kHz and 25 ms)."""
        return int(self.sample_rate * self.frame_length_ms * 0.001)

    @property
    def shift_samples(self) -> int:
        """Samples between frame starts (160 at 16 kHz and 10 ms)."""
        return int(self.sample_rate * self.frame_shift_ms * 0.001)

    @property
    def input_samples(self) -> int:
        """Samples whose fbank is exactly `target_frames` frames (one model input)."""
        return (self.target_frames - 1) * self.shift_samples + self.window_samples

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FeatureConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"feature config: unknown field(s) {sorted(unknown)}; known: {sorted(names)}")
        return cls(**data)

    def differences(self, other: "FeatureConfig") -> list[str]:
        """Human-readable list of the fields that differ from `other`."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [f"{k}: {mine[k]!r} != {theirs[k]!r}" for k in mine if mine[k] != theirs[k]]


@dataclass(frozen=True)
class Normalization:
    """x_norm = (x - mean) / (divisor * std); AST uses divisor 2, PSLA divisor 1."""

    mean: float
    std: float
    divisor: float = 2.0

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Normalization":
        return cls(float(data["mean"]), float(data["std"]), float(data.get("divisor", 2.0)))


# Published statistics for the 16 kHz / 128-bin Kaldi fbank (see shared/reference/anchor-projects.md).
PUBLISHED_STATS: dict[str, tuple[float, float]] = {
    "audioset": (-4.2677393, 4.5689974),
    "esc50": (-6.6268077, 5.358466),
    "fsd50k": (-4.6476, 4.5699),
    "psla-audioset": (-4.6476, 4.5699),  # PSLA's AudioSet recipe (egs/audioset/run.sh), with std divisor 1
}


def apply_overrides(config: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `config` with dotted `key.sub=value` overrides applied (values parsed as YAML).
    Missing keys are created (e.g. `model.NAME.arch=NAME` adds the model family NAME); the caller's schema check
    then rejects the unknown ones."""
    result = copy.deepcopy(config)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r}: expected KEY=VALUE, e.g. optim.lr=1e-4")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = result
        for depth, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {'.'.join(parts[:depth + 1])} is a value, not a section")
        node[parts[-1]] = _parse_value(raw)
    return result


def check_fields(schema: type | tuple[type, ...], data: dict[str, Any], where: str, prefix: str = "") -> None:
    """Raise one-line ValueErrors for keys of `data` that are not fields of the dataclass(es) `schema`
    ("unknown key PREFIX.KEY; known keys in PREFIX: a, b") and for values of the wrong type."""
    schemas = schema if isinstance(schema, tuple) else (schema,)
    hints = {k: v for one in schemas for k, v in typing.get_type_hints(one).items()}
    known = [f.name for one in schemas for f in dataclasses.fields(one)]
    for key, value in data.items():
        if key not in hints:
            scope = f" in {prefix.rstrip('.')}" if prefix else ""
            raise ValueError(f"{where}: unknown key {prefix}{key}; known keys{scope}: {', '.join(known)}")
        check_type(value, hints[key], where, f"{prefix}{key}")


def check_type(value: Any, hint: Any, where: str, name: str) -> None:
    """Raise ValueError when `value` does not fit the type annotation `hint` (int, float, str, bool,
    list[...], X | None; an int is a float)."""
    if not _fits(value, hint):
        wanted = getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
        hint_text = "; YAML reads 1e-5 as text, write 1.0e-5" if isinstance(value, str) and _fits(0.0, hint) else ""
        raise ValueError(f"{where}: {name} = {value!r} has the wrong type, expected {wanted}{hint_text}")


def typed_from_dict(schema: type, data: dict[str, Any], where: str, prefix: str = "") -> Any:
    """The dataclass `schema` built from `data` after check_fields (ints given for float fields become floats)."""
    check_fields(schema, data, where, prefix)
    hints = typing.get_type_hints(schema)
    values = {k: float(v) if hints[k] is float and isinstance(v, int) else v for k, v in data.items()}
    return schema(**values)


def _fits(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in typing.get_args(hint))
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return isinstance(value, list) and all(_fits(v, item) for v in value)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _parse_value(raw: str) -> Any:
    """YAML scalar, but number-like strings YAML 1.1 leaves as text (1e-5) become floats."""
    value = yaml.safe_load(raw)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def dump_config(config: dict[str, Any]) -> str:
    """Printable, stable YAML form of a resolved config."""
    return yaml.safe_dump(config, sort_keys=False)


def fingerprint(data: Any) -> str:
    """Stable short hash of any JSON-serialisable value."""
    import hashlib

    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
