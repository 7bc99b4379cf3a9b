"""A third model family, for tests only: a tiny CRNN (one conv block, a bidirectional GRU over time,
mean over time, linear head). It registers itself on import, as the shipped families do; other
processes (Dask workers, torchrun ranks, stage subprocesses) load it with
CMKD_PIPE_PLUGINS=tests.plugins.crnn and the repository root importable.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from cmkd_pipe.pipeline.models.registry import register_family


@dataclass(frozen=True)
class CRNNConfig:
    """Options of the test CRNN family."""

    arch: str = "crnn"  # always "crnn"
    channels: int = 8  # channels of the conv block
    hidden: int = 16  # GRU width per direction
    drop_rate: float = 0.0  # dropout before the head

    def __post_init__(self) -> None:
        if self.channels < 1 or self.hidden < 1:
            raise ValueError(f"model config: crnn channels/hidden must be >= 1, got {self.channels}/{self.hidden}")


class CRNN(nn.Module):
    """fbank [B, T, F] -> conv over (F, T), pool F by 2 -> GRU over T -> mean over T -> logits [B, C]."""

    def __init__(self, n_classes: int, n_mels: int, n_frames: int, config: CRNNConfig) -> None:
        super().__init__()
        self.n_classes, self.n_mels, self.input_frames = n_classes, n_mels, n_frames
        self.config: dict[str, Any] = {"arch": config.arch, "channels": config.channels, "hidden": config.hidden,
                                       "drop_rate": config.drop_rate}
        self.conv = nn.Sequential(nn.Conv2d(1, config.channels, 3, padding=1), nn.BatchNorm2d(config.channels),
                                  nn.ReLU(), nn.MaxPool2d((2, 1)))
        self.gru = nn.GRU(config.channels * (n_mels // 2), config.hidden, batch_first=True, bidirectional=True)
        self.drop = nn.Dropout(config.drop_rate)
        self.head = nn.Linear(2 * config.hidden, n_classes)

    def reset_head(self) -> None:
        self.head.reset_parameters()

    def forward(self, x: Tensor, return_embedding: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        fmap = self.conv(x.unsqueeze(1).transpose(2, 3))  # [B, C, F/2, T]
        sequence, _ = self.gru(fmap.flatten(1, 2).transpose(1, 2))  # [B, T, 2H]
        embedding = sequence.mean(dim=1)
        logits = self.head(self.drop(embedding))
        return (logits, embedding) if return_embedding else logits


@register_family("crnn", display_name="CRNN (test)", config=CRNNConfig)
def build_crnn(config: CRNNConfig, n_classes: int, n_mels: int, n_frames: int) -> CRNN:
    return CRNN(n_classes, n_mels, n_frames, config)
