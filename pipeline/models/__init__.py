"""Models (AST, EfficientNet / any timm CNN, and any registered family), weight importers and checkpoints.

Model families register themselves (pipeline.models.registry); look them up there, never by name here.

Every model maps fbank [B, T, F] to logits [B, C]; `forward(x, return_embedding=True)` returns
(logits, embedding); `.config` is the plain dict `build_model` rebuilds it from.
"""
import importlib
from typing import Any

# imported on first use, so `pipeline.models.registry` (planning, config checks) does not pull in torch
_WHERE = {
    "AST": "pipeline.models.ast", "CNNClassifier": "pipeline.models.cnn",
    "check_compatible": "pipeline.models.checkpoint", "file_sha256": "pipeline.models.checkpoint",
    "load_checkpoint": "pipeline.models.checkpoint", "save_checkpoint": "pipeline.models.checkpoint",
    "build_model": "pipeline.models.factory", "count_parameters": "pipeline.models.factory",
    "default_model_config": "pipeline.models.factory", "WeightsError": "pipeline.models.weights",
    "load_imagenet_from_hub": "pipeline.models.weights", "load_weights": "pipeline.models.weights",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'pipeline.models' has no attribute {name!r}")


__all__ = [
    "AST",
    "CNNClassifier",
    "WeightsError",
    "build_model",
    "check_compatible",
    "count_parameters",
    "default_model_config",
    "file_sha256",
    "load_checkpoint",
    "load_imagenet_from_hub",
    "load_weights",
    "save_checkpoint",
]
