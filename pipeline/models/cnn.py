"""CNN classifiers: a timm CNN backbone (EfficientNet-B0..B7 or any timm CNN) plus a pooling head.

Input: fbank [B, T, F], viewed as a one-channel image [B, 1, F, T]. The backbone is built by
`timm.create_model(name, in_chans=1, num_classes=0, global_pool="")` (never downloads) and returns its
last feature map [B, C, F', T']. Heads (both return logits):
  mean       CMKD's CNN: mean over frequency and time of the feature map, then Linear.
  attention  PSLA-style: mean over frequency, then per head an attention branch (sigmoid, clamped,
             normalised over time, as PSLA) weighting a *linear* classification branch over time;
             heads are combined by learned weights (init 1/heads). PSLA applies a sigmoid to the
             classification branch and outputs probabilities; ours stays linear so it yields logits.
The embedding is the feature map's mean over frequency and time for both heads. The convolutional
backbone accepts any number of frames; only the mel-bin count is fixed.
"""
from __future__ import annotations

from typing import Any

import timm
import torch
from torch import Tensor, nn

from cmkd_pipe.pipeline.models.cnn_options import ATTENTION_EPS, EFFICIENTNET_VARIANTS, POOLINGS, CNNConfig  # noqa: F401

class MeanPoolingHead(nn.Module):
    """Mean over frequency and time, dropout, Linear -> logits."""

    def __init__(self, in_dim: int, n_classes: int, drop_rate: float) -> None:
        super().__init__()
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_dim, n_classes)

    def reset_parameters(self) -> None:
        self.fc.reset_parameters()

    def forward(self, fmap: Tensor) -> Tensor:
        return self.fc(self.drop(fmap.mean(dim=(2, 3))))


class AttentionPoolingHead(nn.Module):
    """Multi-head attention pooling over time (PSLA form) with a linear classification branch.

    `att` and `cla` hold all heads at once: output unit h*n_classes + k is head h, class k.
    """

    def __init__(self, in_dim: int, n_classes: int, heads: int, drop_rate: float) -> None:
        super().__init__()
        self.heads, self.n_classes = heads, n_classes
        self.drop = nn.Dropout(drop_rate)
        self.att = nn.Linear(in_dim, heads * n_classes)
        self.cla = nn.Linear(in_dim, heads * n_classes)
        self.head_weight = nn.Parameter(torch.empty(heads))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.att.reset_parameters()
        self.cla.reset_parameters()
        nn.init.constant_(self.head_weight, 1.0 / self.heads)

    def forward(self, fmap: Tensor) -> Tensor:
        seq = self.drop(fmap.mean(dim=2).transpose(1, 2))  # [B, T', C]
        b, t, _ = seq.shape
        att = torch.sigmoid(self.att(seq)).clamp(ATTENTION_EPS, 1 - ATTENTION_EPS).view(b, t, self.heads, -1)
        att = att / att.sum(dim=1, keepdim=True)
        cla = self.cla(seq).view(b, t, self.heads, -1)
        pooled = (att * cla).sum(dim=1)  # [B, heads, C]
        return (pooled * self.head_weight.view(1, -1, 1)).sum(dim=1)


class CNNClassifier(nn.Module):
    """timm CNN backbone + pooling head: fbank [B, T, F] -> logits [B, C] (and the embedding)."""

    def __init__(self, backbone: str, n_classes: int, n_mels: int, n_frames: int, *, pooling: str = "mean",
                 heads: int = 4, drop_rate: float = 0.0, drop_path: float = 0.0) -> None:
        super().__init__()
        if not timm.is_model(backbone):
            raise ValueError(f"CNN: timm has no model {backbone!r} (see timm.list_models('*{backbone[:6]}*'))")
        if pooling not in POOLINGS:
            raise ValueError(f"CNN: unknown pooling {pooling!r}; known: {list(POOLINGS)}")
        self.n_classes, self.n_mels, self.input_frames = n_classes, n_mels, n_frames
        self.backbone_name = backbone
        common = {"pooling": pooling, "heads": heads, "drop_rate": drop_rate, "drop_path": drop_path}
        arch = "cnn" if backbone in EFFICIENTNET_VARIANTS else f"timm:{backbone}"
        self.config: dict[str, Any] = {"arch": arch, "variant": backbone, **common}
        extra = {"drop_path_rate": drop_path} if drop_path > 0 else {}
        self.backbone = timm.create_model(
            backbone, pretrained=False, in_chans=1, num_classes=0, global_pool="", **extra
        )
        dim = getattr(self.backbone, "head_hidden_size", None) or self.backbone.num_features  # channels out
        self.head = (
            MeanPoolingHead(dim, n_classes, drop_rate)
            if pooling == "mean"
            else AttentionPoolingHead(dim, n_classes, heads, drop_rate)
        )

    def reset_head(self) -> None:
        """Re-initialise the classification head (used when importing weights with a new head)."""
        self.head.reset_parameters()

    def features(self, x: Tensor) -> Tensor:
        """Backbone feature map [B, C, F', T'] of fbank [B, T, F]."""
        if x.dim() != 3 or x.shape[2] != self.n_mels:
            raise ValueError(f"CNN: expected fbank [B, T, {self.n_mels}] (frames, mel bins), got {tuple(x.shape)}")
        fmap = self.backbone(x.unsqueeze(1).transpose(2, 3))
        if fmap.dim() != 4:
            raise ValueError(
                f"CNN: timm model {self.backbone_name!r} returned shape {tuple(fmap.shape)}, not a "
                "[B, C, H, W] feature map; pick a convolutional model"
            )
        return fmap

    def forward(self, x: Tensor, return_embedding: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        fmap = self.features(x)
        logits = self.head(fmap)
        return (logits, fmap.mean(dim=(2, 3))) if return_embedding else logits


def build_cnn(config: CNNConfig, n_classes: int, n_mels: int, n_frames: int) -> CNNClassifier:
    """The CNN family's model for `config` (registered in pipeline.models.cnn_options)."""
    return CNNClassifier(config.variant, n_classes, n_mels, n_frames, pooling=config.pooling, heads=config.heads,
                         drop_rate=config.drop_rate, drop_path=config.drop_path)
