"""Models (AST, EfficientNet / any timm CNN, and any registered family), weight importers and checkpoints.

Model families register themselves (pipeline.models.registry); look them up there, never by name here.

Every model maps fbank [B, T, F] to logits [B, C]; `forward(x, return_embedding=True)` returns
(logits, embedding); `.config` is the plain dict `build_model` rebuilds it from.
"""
import importlib
from typing import Any

# imported on first use, so `pipeline.models.registry` (planning, config checks) does not pull in torch
_WHERE = {
    "AST": "cmkd_pipe.pipeline.models.ast", "CNNClassifier": "cmkd_pipe.pipeline.models.cnn",
    "check_compatible": "cmkd_pipe.pipeline.models.checkpoint", "file_sha256": "cmkd_pipe.pipeline.models.checkpoint",
    "load_checkpoint": "cmkd_pipe.pipeline.models.checkpoint", "save_checkpoint": "cmkd_pipe.pipeline.models.checkpoint",
    "build_model": "cmkd_pipe.pipeline.models.factory", "count_parameters": "cmkd_pipe.pipeline.models.factory",
    "default_model_config": "cmkd_pipe.pipeline.models.factory", "WeightsError": "cmkd_pipe.pipeline.models.weights",
    "load_imagenet_from_hub": "cmkd_pipe.pipeline.models.weights", "load_weights": "cmkd_pipe.pipeline.models.weights",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'cmkd_pipe.pipeline.models' has no attribute {name!r}")


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
