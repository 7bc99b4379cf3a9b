"""The one documented way to build a model from its plain config dict.

config["arch"] picks the family; every other key is an option with a default:
  cnn         variant (efficientnet_b0..b7 or tf_efficientnet_b0..b7, default b2 as in CMKD),
              pooling ("mean" | "attention"), heads (attention heads), drop_rate (head dropout),
              drop_path (stochastic depth)
  timm:NAME   any timm CNN as backbone, same options as cnn except variant
  ast         size (tiny224 | small224 | base224 | base384 | custom), embed_dim, depth, num_heads
              (custom only), patch, fstride, tstride, drop_rate, drop_path
Every model's `.config` holds its fully resolved options, so `build_model(model.config, ...)`
rebuilds the same architecture.
"""
from __future__ import annotations

import copy
from typing import Any

from torch import nn

from pipeline.models.ast import AST, ast_dims
from pipeline.models.cnn import EFFICIENTNET_VARIANTS, POOLINGS, CNNClassifier

_HEAD_OPTIONS: dict[str, Any] = {"pooling": "mean", "heads": 4, "drop_rate": 0.0, "drop_path": 0.0}
_DEFAULTS: dict[str, dict[str, Any]] = {
    "cnn": {"arch": "cnn", "variant": "efficientnet_b2", **_HEAD_OPTIONS},
    "timm": dict(_HEAD_OPTIONS),
    "ast": {"arch": "ast", "size": "base384", "embed_dim": None, "depth": None, "num_heads": None, "patch": 16,
            "fstride": 10, "tstride": 10, "drop_rate": 0.0, "drop_path": 0.0},
}
_INT_OPTIONS = {"heads", "patch", "fstride", "tstride", "embed_dim", "depth", "num_heads"}
_FLOAT_OPTIONS = {"drop_rate", "drop_path"}
_OPTIONAL = {"embed_dim", "depth", "num_heads"}


def default_model_config(arch: str) -> dict[str, Any]:
    """Every option of `arch` ("cnn", "ast" or "timm:NAME") with its default value."""
    return copy.deepcopy({**_DEFAULTS[_family(arch)], "arch": arch})


def build_model(config: dict[str, Any], n_classes: int, n_mels: int, n_frames: int) -> nn.Module:
    """Build the model `config` describes for `n_classes` outputs and [n_frames, n_mels] fbank input."""
    for name, value in (("n_classes", n_classes), ("n_mels", n_mels), ("n_frames", n_frames)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"build_model: {name} must be a positive int, got {value!r}")
    opts = _resolve(config)
    arch = opts.pop("arch")
    if arch == "ast":
        return AST(n_classes, n_mels, n_frames, **opts)
    backbone = opts.pop("variant") if arch == "cnn" else arch[len("timm:"):]
    return CNNClassifier(backbone, n_classes, n_mels, n_frames, **opts)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (only those with requires_grad when `trainable_only`)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _family(arch: Any) -> str:
    if arch in ("cnn", "ast"):
        return arch
    if isinstance(arch, str) and arch.startswith("timm:") and len(arch) > len("timm:"):
        return "timm"
    raise ValueError(f"model config: unknown arch {arch!r}; use 'cnn', 'ast' or 'timm:NAME' (e.g. timm:resnet18)")


def _resolve(config: dict[str, Any]) -> dict[str, Any]:
    """Defaults filled in and every option checked; raises ValueError naming the bad option."""
    if not isinstance(config, dict) or "arch" not in config:
        raise ValueError(f"model config: expected a dict with an 'arch' key, got {config!r}")
    arch = config["arch"]
    opts = default_model_config(arch)
    unknown = sorted(set(config) - set(opts))
    if unknown:
        raise ValueError(f"model config: unknown option(s) {unknown} for arch {arch!r}; known: {sorted(opts)}")
    opts.update(config)
    for key, value in opts.items():
        _check_type(arch, key, value)
    if _family(arch) == "ast":
        ast_dims(opts["size"], opts["embed_dim"], opts["depth"], opts["num_heads"])  # raises on bad sizes
        for key in ("patch", "fstride", "tstride"):
            _check_positive(arch, key, opts[key])
    else:
        if arch == "cnn" and opts["variant"] not in EFFICIENTNET_VARIANTS:
            raise ValueError(
                f"model config: unknown cnn variant {opts['variant']!r}; known: {list(EFFICIENTNET_VARIANTS)}"
            )
        if opts["pooling"] not in POOLINGS:
            raise ValueError(f"model config: unknown pooling {opts['pooling']!r}; known: {list(POOLINGS)}")
        _check_positive(arch, "heads", opts["heads"])
    for key in _FLOAT_OPTIONS:
        if not 0.0 <= opts[key] < 1.0:
            raise ValueError(f"model config: {key} must be in [0, 1), got {opts[key]!r}")
        opts[key] = float(opts[key])
    return opts


def _check_type(arch: str, key: str, value: Any) -> None:
    if key in _OPTIONAL and value is None:
        return
    if key in _INT_OPTIONS:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif key in _FLOAT_OPTIONS:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ValueError(f"model config: option {key!r} of arch {arch!r} has the wrong type: {value!r}")


def _check_positive(arch: str, key: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"model config: option {key!r} of arch {arch!r} must be >= 1, got {value}")
