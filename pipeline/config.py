"""Typed configuration pieces shared by every stage: front-end, normalisation, dotted overrides."""
from __future__ import annotations

import copy
import dataclasses
import json
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
}


def apply_overrides(config: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `config` with dotted `key.sub=value` overrides applied (values parsed as YAML)."""
    result = copy.deepcopy(config)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r}: expected KEY=VALUE, e.g. optim.lr=1e-4")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = result
        for part in parts[:-1]:
            if part not in node or not isinstance(node[part], dict):
                raise ValueError(f"override {item!r}: no section {part!r} in the config")
            node = node[part]
        if parts[-1] not in node:
            raise ValueError(f"override {item!r}: unknown key {key!r}; known here: {sorted(node)}")
        node[parts[-1]] = _parse_value(raw)
    return result


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
