"""The one documented way to build a model from its plain config dict.

config["arch"] picks the model family (pipeline.models.registry: "cnn" and "timm:NAME" are the CNN,
"ast" the AST, ...); every other key is an option of that family's typed config, with a default:
  cnn         pipeline.models.cnn.CNNConfig (variant, pooling, heads, drop_rate, drop_path)
  ast         pipeline.models.ast.ASTConfig (size, embed_dim, depth, num_heads, patch, fstride, ...)
Every model's `.config` holds its fully resolved options, so `build_model(model.config, ...)`
rebuilds the same architecture.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from cmkd_pipe.pipeline.config import typed_from_dict
from cmkd_pipe.pipeline.models.registry import family_of_arch, family_of_model


def default_model_config(arch: str) -> dict[str, Any]:
    """Every option of `arch` (e.g. "cnn", "ast" or "timm:NAME") with its default value."""
    return dataclasses.asdict(family_of_arch(arch).default_config(arch))


def build_model(config: dict[str, Any], n_classes: int, n_mels: int, n_frames: int) -> nn.Module:
    """Build the model `config` describes for `n_classes` outputs and [n_frames, n_mels] fbank input."""
    for name, value in (("n_classes", n_classes), ("n_mels", n_mels), ("n_frames", n_frames)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"build_model: {name} must be a positive int, got {value!r}")
    if not isinstance(config, dict) or "arch" not in config:
        raise ValueError(f"model config: expected a dict with an 'arch' key, got {config!r}")
    family = family_of_arch(config["arch"])
    known = [f.name for f in dataclasses.fields(family.config)]
    unknown = sorted(set(config) - set(known))
    if unknown:
        raise ValueError(f"model config: unknown option(s) {unknown} for arch {config['arch']!r}; known: {known}")
    return family.build(typed_from_dict(family.config, config, "model config"), n_classes, n_mels, n_frames)


def preferred_memory_format(model: nn.Module) -> nn.Module:
    """`model` in channels_last memory when its family prefers it (convolutions: faster on CUDA, and on
    the CPU 1.25-1.4x for the demo CNN's train and eval steps, measured), else unchanged."""
    return model.to(memory_format=torch.channels_last) if family_of_model(model).channels_last else model


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (only those with requires_grad when `trainable_only`)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
