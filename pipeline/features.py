"""Kaldi-compatible log-mel fbank, pad/trim and normalisation (AST/PSLA conventions)."""
from __future__ import annotations

import torch
import torchaudio.compliance.kaldi as kaldi

from cmkd_pipe.pipeline.config import FeatureConfig, Normalization


def fbank(waveform: torch.Tensor, config: FeatureConfig) -> torch.Tensor:
    """Log-mel fbank [frames, bins] of a mono waveform, as the AST/PSLA loaders compute it."""
    wav = waveform.to(torch.float32)
    if config.remove_dc:
        wav = wav - wav.mean()
    return kaldi.fbank(
        wav.unsqueeze(0),
        htk_compat=True,
        sample_frequency=config.sample_rate,
        use_energy=False,
        window_type=config.window_type,
        num_mel_bins=config.num_mel_bins,
        dither=config.dither,
        frame_length=config.frame_length_ms,
        frame_shift=config.frame_shift_ms,
    )


def pad_or_trim(features: torch.Tensor, target_frames: int) -> tuple[torch.Tensor, int]:
    """Zero-pad or cut the tail to `target_frames`; return (features, number of real frames kept)."""
    frames = features.shape[0]
    if frames >= target_frames:
        return features[:target_frames], target_frames
    pad = features.new_zeros((target_frames - frames, features.shape[1]))
    return torch.cat([features, pad], dim=0), frames


def clip_features(waveform: torch.Tensor, config: FeatureConfig) -> tuple[torch.Tensor, int]:
    """fbank then pad/trim to the configured length."""
    return pad_or_trim(fbank(waveform, config), config.target_frames)


def normalize(features: torch.Tensor, norm: Normalization) -> torch.Tensor:
    """(x - mean) / (divisor * std)."""
    return (features - norm.mean) / (norm.divisor * norm.std)
