"""Audio at the door (decode, downmix, band-limited resampling, rejection reasons) and the fbank front-end."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.compliance.kaldi as kaldi

from cmkd_pipe.pipeline.audio import AudioError, load_audio
from cmkd_pipe.pipeline.config import FeatureConfig
from cmkd_pipe.pipeline.features import clip_features, fbank, pad_or_trim

SR = 16000


def ast_fbank(wav: torch.Tensor, sr: int) -> torch.Tensor:
    """The fbank call of the AST/PSLA data loaders, on a [1, samples] waveform."""
    return kaldi.fbank(wav - wav.mean(), htk_compat=True, sample_frequency=sr, use_energy=False,
                       window_type="hanning", num_mel_bins=128, dither=0.0, frame_shift=10)


def spectrum(wave: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """Frequencies and magnitudes of a Hann-windowed FFT of a 1-D signal."""
    return np.fft.rfftfreq(len(wave), 1 / sr), np.abs(np.fft.rfft(wave * np.hanning(len(wave))))


def rms(wave: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(wave, dtype=np.float64))))


def write(path: Path, audio: np.ndarray, sr: int, subtype: str = "FLOAT") -> Path:
    sf.write(path, audio, sr, subtype=subtype)
    return path


# ---------------------------------------------------------------- fbank

def test_fbank_matches_the_ast_loader_call(make_tone):
    wave = torch.from_numpy(make_tone(440.0, 1.37, SR, noise=0.1) + 0.2)  # a DC offset that must be removed
    ours = fbank(wave, FeatureConfig())
    theirs = ast_fbank(wave.unsqueeze(0), SR)
    assert ours.shape == theirs.shape == (1 + (len(wave) - 400) // 160, 128)
    assert torch.max(torch.abs(ours - theirs)) < 1e-3


def test_fbank_of_a_decoded_file_matches_the_ast_loader(tmp_path, make_tone):
    """load_audio + fbank against soundfile decode + the loader's call (PCM_16 → float32 in [-1, 1))."""
    path = write(tmp_path / "clip.wav", make_tone(1000.0, 1.0, SR, noise=0.05), SR, "PCM_16")
    decoded, _ = sf.read(path, dtype="float32", always_2d=True)
    theirs = ast_fbank(torch.from_numpy(decoded.T.copy()), SR)
    assert torch.max(torch.abs(fbank(load_audio(path), FeatureConfig()) - theirs)) < 1e-3


def test_pad_or_trim():
    features = torch.arange(30, dtype=torch.float32).reshape(10, 3) + 1
    padded, valid = pad_or_trim(features, 16)
    assert padded.shape == (16, 3) and valid == 10
    assert torch.equal(padded[:10], features) and torch.all(padded[10:] == 0)
    trimmed, valid = pad_or_trim(features, 4)
    assert valid == 4 and torch.equal(trimmed, features[:4])  # the tail is cut, the head kept
    same, valid = pad_or_trim(features, 10)
    assert valid == 10 and torch.equal(same, features)


def test_clip_features_is_fbank_then_pad_or_trim(make_tone):
    wave = torch.from_numpy(make_tone(700.0, 0.5, SR, noise=0.05))
    full = fbank(wave, FeatureConfig())  # 48 frames
    short, valid = clip_features(wave, FeatureConfig(target_frames=100))
    assert valid == full.shape[0] == 48 and torch.equal(short[:48], full) and torch.all(short[48:] == 0)
    long, valid = clip_features(wave, FeatureConfig(target_frames=20))
    assert valid == 20 and torch.equal(long, full[:20])


# ---------------------------------------------------------------- downmix and resampling

def test_stereo_is_averaged_to_mono(tmp_path, make_tone):
    left, right = make_tone(440.0, 0.5, SR, 0.6), make_tone(950.0, 0.5, SR, 0.3)
    path = write(tmp_path / "stereo.wav", np.stack([left, right], axis=1), SR)
    mono = load_audio(path).numpy()
    np.testing.assert_allclose(mono, (left + right) / 2, atol=1e-7)


@pytest.mark.parametrize("orig", [44100, 48000, 8000])
def test_resampling_keeps_a_1khz_tone(tmp_path, make_tone, orig):
    amplitude = 0.5
    wave = make_tone(1000.0, 2.0, orig, amplitude)
    out = load_audio(write(tmp_path / "tone.wav", wave, orig)).numpy()
    assert len(out) == int(np.ceil(len(wave) * SR / orig))
    core = out[SR // 10: -SR // 10]  # away from the filter's edge transients
    freqs, mags = spectrum(core, SR)
    assert abs(freqs[np.argmax(mags)] - 1000.0) <= freqs[1]
    assert rms(core) == pytest.approx(amplitude / np.sqrt(2), rel=2e-3)
    assert rms(core - amplitude * np.sin(2 * np.pi * 1000.0 * np.arange(SR // 10, len(out) - SR // 10) / SR)) \
        < 1e-3 * amplitude  # same phase too: no delay introduced by the filter


@pytest.mark.parametrize("orig, freq", [(44100, 20000.0), (48000, 12000.0), (44100, 12000.0)])
def test_tones_above_the_new_nyquist_are_removed_not_aliased(tmp_path, make_tone, orig, freq):
    """Sample dropping would fold these tones to 4 kHz (or 3.9/5.3 kHz); the filter must remove them."""
    amplitude = 0.5
    path = write(tmp_path / "high.wav", make_tone(freq, 1.0, orig, amplitude), orig)
    out = load_audio(path, min_samples=0)
    core = out.numpy()[SR // 10: -SR // 10]
    assert rms(core) < 1e-3 * amplitude / np.sqrt(2)  # ≥ 60 dB down


def test_the_aliasing_check_catches_sample_dropping(make_tone):
    """Guard for the test above: naive 48 kHz → 16 kHz decimation folds a 12 kHz tone to a loud 4 kHz."""
    dropped = make_tone(12000.0, 1.0, 48000)[::3]
    freqs, mags = spectrum(dropped, SR)
    assert abs(freqs[np.argmax(mags)] - 4000.0) <= freqs[1]
    assert rms(dropped) > 0.3


def test_upsampling_adds_no_images(tmp_path, make_tone):
    """8 kHz → 16 kHz: a 1 kHz tone must not gain an image at 7 kHz (or anything above 4 kHz)."""
    path = write(tmp_path / "low.wav", make_tone(1000.0, 1.0, 8000), 8000)
    freqs, mags = spectrum(load_audio(path).numpy()[SR // 10: -SR // 10], SR)
    assert mags[freqs > 4200].max() < 1e-4 * mags.max()


# ---------------------------------------------------------------- rejected input

def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


def _link(path: Path, target: Path) -> Path:
    path.symlink_to(target)
    return path


def test_a_quiet_but_real_16_bit_recording_passes(tmp_path, make_tone):
    path = write(tmp_path / "quiet.wav", make_tone(440.0, 0.5, SR, amplitude=2e-4), SR, "PCM_16")
    assert load_audio(path, SR).abs().max() > 1e-4


def _nan_clip(make_tone) -> np.ndarray:
    wave = make_tone(440.0, 0.5, SR)
    wave[100] = np.nan
    return wave


@pytest.mark.parametrize("reason, make_file", [
    ("missing", lambda d, t: d / "absent.wav"),
    ("unreadable", lambda d, t: _bytes(d / "corrupt.wav", b"RIFF\x10\x00\x00\x00WAVEthis is no audio")),
    ("empty", lambda d, t: write(d / "empty.wav", np.zeros(0, dtype=np.float32), SR)),
    ("too-short", lambda d, t: write(d / "short.wav", t(440.0, 0.02, SR), SR)),  # 320 < 400 samples
    ("too-short", lambda d, t: write(d / "short44.wav", t(440.0, 0.02, 44100), 44100)),  # 882 samples, 320 at 16 kHz
    ("silent", lambda d, t: write(d / "silent.wav", np.zeros(SR, dtype=np.float32), SR, "PCM_16")),
    ("non-finite", lambda d, t: write(d / "nan.wav", _nan_clip(t), SR)),
    ("channels", lambda d, t: write(d / "nine.wav", t(440.0, 0.5, SR, channels=9), SR, "PCM_16")),
    ("too-quiet", lambda d, t: write(d / "tiny.wav", t(440.0, 0.5, SR, amplitude=1e-30), SR)),
    ("constant", lambda d, t: write(d / "dc.wav", np.full(SR, 0.3, dtype=np.float32), SR)),
    ("constant", lambda d, t: write(d / "dc16.wav", np.full(SR, 0.3, dtype=np.float32), SR, "PCM_16")),
    ("not-a-file", lambda d, t: _folder(d / "x.wav")),
    ("missing", lambda d, t: _link(d / "link.wav", d / "gone.wav")),
])
def test_every_rejection_reason(tmp_path, make_tone, reason, make_file):
    path = make_file(tmp_path, make_tone)
    with pytest.raises(AudioError) as caught:
        load_audio(path, SR, max_channels=8, min_samples=400)
    assert caught.value.reason == reason
    assert str(path) in str(caught.value) and reason in str(caught.value)
