"""Audio decoding at the door: soundfile decode, validation, downmix, band-limited resampling."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

DEFAULT_MIN_LEVEL = 1e-5  # full scale; below one 16-bit step (3.1e-5): no recorder produces a real signal there


class AudioError(ValueError):
    """A clip that cannot become features; `reason` is a short machine-friendly code."""

    def __init__(self, path: str | Path, reason: str, detail: str = "") -> None:
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))


def decode(path: str | Path) -> tuple[np.ndarray, int]:
    """Decode a file with soundfile into float32 [samples, channels] and its sample rate."""
    path = Path(path)
    if path.is_dir():
        raise AudioError(path, "not-a-file", "a folder, not an audio file")
    if path.is_symlink() and not path.exists():
        raise AudioError(path, "missing", f"broken symbolic link to {os.readlink(path)}")
    if not path.exists():
        raise AudioError(path, "missing", "no such file")
    if not path.is_file():
        raise AudioError(path, "not-a-file", "not a regular file")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as error:  # libsndfile raises several types for corrupt input
        raise AudioError(path, "unreadable", str(error).splitlines()[0][:200]) from None
    return data, int(rate)


def load_audio(path: str | Path, sample_rate: int = 16000, *, max_channels: int = 8,
               min_samples: int = 400, min_level: float = DEFAULT_MIN_LEVEL) -> torch.Tensor:
    """Return a mono float32 waveform at `sample_rate`; raise AudioError for unusable input.

    Rejected: missing or unreadable files, empty or too-short clips (fewer than `min_samples` after
    resampling, i.e. one analysis window), more than `max_channels` channels, NaN/inf samples, silence,
    a peak below `min_level` (below the noise floor of any recording), and constant or near-constant
    signals (DC: spread after removing the mean below `min_level`).
    Several channels are averaged; other rates are resampled with a Kaiser-windowed sinc filter.
    """
    data, rate = decode(path)
    if data.shape[0] == 0:
        raise AudioError(path, "empty", "0 samples")
    if data.shape[1] > max_channels:
        raise AudioError(path, "channels", f"{data.shape[1]} channels, at most {max_channels} accepted")
    if not np.isfinite(data).all():
        raise AudioError(path, "non-finite", "NaN or inf samples")
    mono = torch.from_numpy(data.mean(axis=1))
    if rate != sample_rate:
        mono = resample(mono, rate, sample_rate)
    if mono.numel() < min_samples:
        raise AudioError(path, "too-short", f"{mono.numel()} samples at {sample_rate} Hz, need {min_samples}")
    peak = float(mono.abs().max())
    if peak == 0.0:
        raise AudioError(path, "silent", "all samples are zero")
    if peak < min_level:
        raise AudioError(path, "too-quiet", f"peak {peak:.3g} below the floor {min_level:g} (min_level)")
    spread = float((mono.double() - mono.double().mean()).std())
    if spread < min_level:
        raise AudioError(path, "constant", f"no signal around the mean (std {spread:.3g} after removing "
                                           f"DC, floor {min_level:g})")
    return mono


def resample(waveform: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """Band-limited resampling (Kaiser-windowed sinc, librosa 'kaiser_best'-like settings)."""
    return AF.resample(waveform, orig_rate, new_rate, lowpass_filter_width=16, rolloff=0.945,
                       resampling_method="sinc_interp_kaiser", beta=14.769656459379492)
