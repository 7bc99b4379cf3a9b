"""Models (AST, EfficientNet / any timm CNN, and any registered family), weight importers and checkpoints.

Model families register themselves (pipeline.models.registry); look them up there, never by name here.

Every model maps fbank [B, T, F] to logits [B, C]; `forward(x, return_embedding=True)` returns
(logits, embedding); `.config` is the plain dict `build_model` rebuilds it from.
"""
from pipeline.models.ast import AST
from pipeline.models.checkpoint import check_compatible, file_sha256, load_checkpoint, save_checkpoint
from pipeline.models.cnn import CNNClassifier
from pipeline.models.factory import build_model, count_parameters, default_model_config
from pipeline.models.weights import WeightsError, load_imagenet_from_hub, load_weights

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
