"""A Kaldi-compatible log-mel fbank as an `nn.Module`, written with operators ONNX supports.

It computes what `pipeline.features.clip_features` + `normalize` compute (torchaudio.compliance.kaldi.fbank
with htk_compat, no energy, no dither, snip_edges), but batched and exportable: framing by a strided
view (`unfold`), per-frame DC removal, pre-emphasis 0.97 (first sample replicated, as Kaldi), the
checkpoint's window, the power spectrum by a real-DFT matmul (cos/sin matrices, no torch.stft), Kaldi
mel banks (`torchaudio.compliance.kaldi.get_mel_banks`), log with Kaldi's epsilon floor, zero pad/trim
to the model's input length and the checkpoint's normalisation. The arithmetic is float64: torchaudio's
float32 FFT is itself up to ~1e-3 (log) off the exact fbank in quiet bands, and a float32 DFT matmul errs
differently, so only the exact value stays within 1e-3 of torchaudio's. Waveform: [B, samples], mono float32 at
the feature config's sample rate.
"""
from __future__ import annotations

import math

import torch
import torchaudio.compliance.kaldi as kaldi
from torch import Tensor, nn

from cmkd_pipe.pipeline.config import FeatureConfig, Normalization

PREEMPHASIS = 0.97
LOW_FREQ_HZ = 20.0  # Kaldi's default low edge of the first mel bin
EPSILON = torch.finfo(torch.float32).eps  # Kaldi's floor before the log


def kaldi_window(window_type: str, size: int) -> Tensor:
    """The analysis window Kaldi uses for `window_type` (float64)."""
    hann = torch.hann_window(size, periodic=False, dtype=torch.float64)
    if window_type == "hanning":
        return hann
    if window_type == "povey":
        return hann.pow(0.85)
    if window_type == "hamming":
        return torch.hamming_window(size, periodic=False, alpha=0.54, beta=0.46, dtype=torch.float64)
    if window_type == "rectangular":
        return torch.ones(size, dtype=torch.float64)
    raise ValueError(f"feature config: window_type {window_type!r} is not exportable; "
                     "use hanning, povey, hamming or rectangular")


class KaldiFbank(nn.Module):
    """waveform [B, samples] -> log-mel fbank [B, frames, bins] (frames = 1 + (samples - window) // shift)."""

    def __init__(self, config: FeatureConfig) -> None:
        super().__init__()
        if config.dither != 0.0:
            raise ValueError("feature config: dither must be 0 for an exported (deterministic) front end")
        self.config = config
        self.window_size, self.window_shift = config.window_samples, config.shift_samples
        n_fft = 1 << math.ceil(math.log2(self.window_size))  # Kaldi rounds the window to a power of two
        n = torch.arange(self.window_size, dtype=torch.float64)[:, None]
        k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)[None, :]
        angle = 2 * math.pi * n * k / n_fft  # the zero padding to n_fft contributes nothing
        window = kaldi_window(config.window_type, self.window_size)[:, None]
        self.register_buffer("dft_cos", window * torch.cos(angle), persistent=False)
        self.register_buffer("dft_sin", window * torch.sin(angle), persistent=False)
        banks, _ = kaldi.get_mel_banks(config.num_mel_bins, n_fft, float(config.sample_rate), LOW_FREQ_HZ, 0.0,
                                       100.0, -500.0, 1.0)
        banks = torch.nn.functional.pad(banks, (0, 1))  # the Nyquist bin gets no weight, as in Kaldi
        self.register_buffer("mel_banks", banks.T.contiguous().double(), persistent=False)

    def forward(self, waveform: Tensor) -> Tensor:
        wav = waveform.to(torch.float32).to(torch.float64)  # float32 input; float64 arithmetic (see above)
        if self.config.remove_dc:
            wav = wav - wav.mean(dim=-1, keepdim=True)
        frames = wav.unfold(-1, self.window_size, self.window_shift)  # [B, frames, window]
        frames = frames - frames.mean(dim=-1, keepdim=True)
        previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
        frames = frames - PREEMPHASIS * previous
        power = (frames @ self.dft_cos) ** 2 + (frames @ self.dft_sin) ** 2
        return torch.clamp(power @ self.mel_banks, min=EPSILON).log().to(torch.float32)


class ModelInput(nn.Module):
    """fbank [B, frames, bins] -> zero pad/trim to `target_frames`, then normalise (as in training)."""

    def __init__(self, target_frames: int, norm: Normalization) -> None:
        super().__init__()
        self.target_frames = target_frames
        self.mean, self.scale = float(norm.mean), float(norm.divisor * norm.std)

    def forward(self, fbank: Tensor) -> Tensor:
        zeros = fbank.new_zeros(fbank.shape[0], self.target_frames, fbank.shape[2])
        fixed = torch.cat([fbank, zeros], dim=1)[:, : self.target_frames]
        return (fixed - self.mean) / self.scale


class WaveformClassifier(nn.Module):
    """waveform [B, samples] -> logits [B, classes]: KaldiFbank, ModelInput, then the trained model."""

    def __init__(self, model: nn.Module, config: FeatureConfig, norm: Normalization) -> None:
        super().__init__()
        self.fbank = KaldiFbank(config)
        self.prepare = ModelInput(config.target_frames, norm)
        self.model = model

    def forward(self, waveform: Tensor) -> Tensor:
        return self.model(self.prepare(self.fbank(waveform)))


class FbankClassifier(nn.Module):
    """raw fbank [B, frames, bins] (as `pipeline.features.fbank` gives) -> logits: ModelInput, then the model."""

    def __init__(self, model: nn.Module, config: FeatureConfig, norm: Normalization) -> None:
        super().__init__()
        self.prepare = ModelInput(config.target_frames, norm)
        self.model = model

    def forward(self, fbank: Tensor) -> Tensor:
        return self.model(self.prepare(fbank))
