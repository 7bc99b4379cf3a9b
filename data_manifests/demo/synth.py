"""The demo corpus's sound synthesiser: twelve synthetic sound classes with real within-class variety.

`render_clip(rng, classes, sr, n, background_events)` makes one clip from a seeded generator: one
randomly parameterised event (or, for the multi-label variant, a mixture of 1-3 events of distinct
classes) with random reverb, placed at a random onset over a random background at a random SNR, then
peak-normalised. Class parameter ranges overlap on purpose (note/bell/siren, chirp/bird, rain/noise
burst/ticks, drum/ticks), so the task is learnable but not trivial. docs/DEMO_CORPUS.md
describes each class.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import signal

DEMO_CLASSES: list[tuple[str, str]] = [
    ("chirp_up", "Rising chirp"),
    ("chirp_down", "Falling chirp"),
    ("bird", "Bird trill"),
    ("note", "Harmonic note"),
    ("bell", "Bell"),
    ("siren", "Siren"),
    ("engine", "Engine hum"),
    ("drum", "Drum hit"),
    ("ticks", "Tick train"),
    ("noise_burst", "Noise burst"),
    ("rain", "Rain"),
    ("speech", "Speech-like babble"),
]

Rng = np.random.Generator
SNR_DB = (6.0, 30.0)  # event (where it sounds) against the noise/hum floor
FAINT_EVENT_DB = (10.0, 20.0)  # how far below the clip's event the faint other-class events sit


def render_clip(rng: Rng, classes: list[int], sr: int, n: int, background_events: bool) -> np.ndarray:
    """Events with reverb at random onsets and gains over a noise/hum floor at a random SNR (plus, for
    single-label clips, sometimes faint events of other classes), peak-normalised to 0.3-0.9."""
    foreground = np.zeros(n)
    active = np.zeros(n, dtype=bool)
    for i, c in enumerate(classes):
        gain = 1.0 if i == 0 else 10 ** (rng.uniform(-12, 0) / 20)
        active |= _place(rng, foreground, c, sr, gain)
    level = _rms(foreground[active])
    floor = _noise_floor(rng, sr, n)
    mix = foreground + floor * level / _rms(floor) * 10 ** (-rng.uniform(*SNR_DB) / 20)
    if background_events and rng.random() < 0.25:
        others = [c for c in range(len(SYNTHS)) if c not in classes]
        for c in rng.choice(others, size=int(rng.integers(1, 3)), replace=False):
            _place(rng, mix, int(c), sr, level * 10 ** (-rng.uniform(*FAINT_EVENT_DB) / 20))
    return (mix * rng.uniform(0.3, 0.9) / np.max(np.abs(mix))).astype(np.float32)


def _place(rng: Rng, out: np.ndarray, c: int, sr: int, level: float) -> np.ndarray:
    """Add one reverberated event of class `c` at a random onset, its dry part at RMS `level`; return
    the mask of samples where the dry event sounds."""
    dry = SYNTHS[c](rng, sr, len(out))
    onset = int(rng.integers(0, len(out) - len(dry) + 1))
    wet = _reverb(rng, sr, dry)[: len(out) - onset]
    out[onset:onset + len(wet)] += level * wet / _rms(dry)
    mask = np.zeros(len(out), dtype=bool)
    mask[onset:onset + len(dry)] = True
    return mask


# ---------------------------------------------------------------- shared pieces

def _lu(rng: Rng, low: float, high: float) -> float:
    """Log-uniform draw in [low, high]."""
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x ** 2))) + 1e-12


def _samples(seconds: float, sr: int, max_n: int) -> int:
    return int(np.clip(seconds * sr, 16, max_n))


def _fcap(f: float | np.ndarray, sr: int) -> float | np.ndarray:
    """Keep frequencies below 0.45 × sample rate (no aliasing at low rates)."""
    return np.minimum(f, 0.45 * sr)


def _envelope(rng: Rng, n: int, sr: int, attack: tuple[float, float], decay: tuple[float, float],
              p_sustain: float) -> np.ndarray:
    """Linear attack, then either a sustain with linear release or an exponential decay."""
    t = np.arange(n) / sr
    a = _lu(rng, *attack)
    env = np.minimum(t / a, 1.0)
    if rng.random() < p_sustain:
        release = min(_lu(rng, 0.01, 0.3), n / sr / 2)
        return env * np.clip((n / sr - t) / release, 0.0, 1.0)
    fade = np.clip((n - np.arange(n)) / (0.005 * sr), 0.0, 1.0)  # no click where the decay is cut
    return env * np.exp(-np.maximum(t - a, 0.0) / _lu(rng, *decay)) * fade


def _sweep_freq(f_start: float, f_end: float, n: int, exponential: bool) -> np.ndarray:
    u = np.linspace(0.0, 1.0, n)
    return f_start * (f_end / f_start) ** u if exponential else f_start + (f_end - f_start) * u


def _phase(freq: np.ndarray, sr: int) -> np.ndarray:
    return 2 * np.pi * np.cumsum(freq) / sr


def _harmonics(phase: np.ndarray, amps: np.ndarray, sr: int, freq: np.ndarray) -> np.ndarray:
    """Σ_k amps[k] sin((k+1)·phase) via powers of e^{i·phase}; overtones above 0.45 × sr are dropped
    (callers keep the fundamental below it with `_fcap`)."""
    step = np.exp(1j * phase)
    z = np.ones_like(step)
    out = np.zeros(len(phase))
    for k, amp in enumerate(amps, start=1):
        if k > 1 and k * np.max(freq) > 0.45 * sr:
            break
        z *= step
        out += amp * z.imag
    return out


def _bandpass(x: np.ndarray, sr: int, center: float, octaves: float, order: int = 2) -> np.ndarray:
    low = max(center * 2 ** (-octaves / 2), 20.0)
    high = min(center * 2 ** (octaves / 2), 0.47 * sr)
    low = min(low, high * 0.8)
    sos = signal.butter(order, [low, high], btype="bandpass", fs=sr, output="sos")
    return signal.sosfilt(sos, x)


def _lowpass(x: np.ndarray, sr: int, cutoff: float, order: int = 2) -> np.ndarray:
    sos = signal.butter(order, min(cutoff, 0.45 * sr), btype="lowpass", fs=sr, output="sos")
    return signal.sosfilt(sos, x)


def _resonance(sr: int, freq: float, tau: float) -> np.ndarray:
    """A short exponentially decaying sinusoid: the sound of one click."""
    t = np.arange(max(int(6 * tau * sr), 8)) / sr
    return np.sin(2 * np.pi * _fcap(freq, sr) * t) * np.exp(-t / tau)


def _colored_noise(rng: Rng, sr: int, n: int, beta: float) -> np.ndarray:
    """Noise with power spectrum 1/f^beta (0 white, 1 pink, 2 brown), flat below 20 Hz."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    spectrum *= np.maximum(np.fft.rfftfreq(n, 1 / sr), 20.0) ** (-beta / 2)
    spectrum[0] = 0.0
    return np.fft.irfft(spectrum, n)


def _reverb(rng: Rng, sr: int, x: np.ndarray) -> np.ndarray:
    """Convolve with a random decaying-noise impulse response (RT60 50 ms-1.2 s); 20% stay dry."""
    if rng.random() < 0.2:
        return x
    rt60 = _lu(rng, 0.05, 1.2)
    t = np.arange(int(rt60 * sr)) / sr
    ir = rng.standard_normal(len(t)) * np.exp(-6.9 * t / rt60)
    damping = np.exp(-2 * np.pi * _fcap(_lu(rng, 2000, 8000), sr) / sr)  # one-pole low-pass: air/walls
    ir = signal.lfilter([1 - damping], [1, -damping], ir)
    ir *= rng.uniform(0.2, 1.0) / _rms(ir) / np.sqrt(len(ir))
    ir[0] += 1.0  # direct path
    return signal.fftconvolve(x, ir)


def _noise_floor(rng: Rng, sr: int, n: int) -> np.ndarray:
    """Coloured noise (white..brown) or mains hum (50/60 Hz, 2-8 harmonics) over a little noise."""
    noise = _colored_noise(rng, sr, n, rng.uniform(0.0, 2.0))
    if rng.random() < 0.7:
        return noise
    mains = rng.choice([50.0, 60.0]) * rng.uniform(0.98, 1.02)
    freq = np.full(n, mains)
    hum = _harmonics(_phase(freq, sr), rng.uniform(0.0, 1.0, size=int(rng.integers(2, 9))), sr, freq)
    return hum / _rms(hum) + 0.3 * noise / _rms(noise)


# ---------------------------------------------------------------- the classes: (rng, sr, max_n) -> event

def _chirp(rng: Rng, sr: int, max_n: int, rising: bool) -> np.ndarray:
    """Sine sweep (with 0-2 weak harmonics) over a ratio of 1.3-4, linear or exponential."""
    n = _samples(_lu(rng, 0.12, 1.6), sr, max_n)
    low = _lu(rng, 250, 2500)
    high = _fcap(low * _lu(rng, 1.3, 4.0), sr)
    freq = _sweep_freq(low, high, n, rng.random() < 0.5) if rising else _sweep_freq(high, low, n, rng.random() < 0.5)
    amps = np.concatenate([[1.0], rng.uniform(0.0, 0.4, size=int(rng.integers(0, 3)))])
    tone = _harmonics(_phase(freq, sr), amps, sr, freq)
    return tone * _envelope(rng, n, sr, (0.003, 0.08), (0.1, 1.0), p_sustain=0.7)


def _chirp_up(rng: Rng, sr: int, max_n: int) -> np.ndarray:
    return _chirp(rng, sr, max_n, rising=True)


def _chirp_down(rng: Rng, sr: int, max_n: int) -> np.ndarray:
    return _chirp(rng, sr, max_n, rising=False)


def _bird(rng: Rng, sr: int, max_n: int) -> np.ndarray:
    """1-10 fast FM syllables (20-250 ms, 1.2-6 kHz, either direction) with short gaps."""
    pieces = []
    used = 0
    for _ in range(int(rng.integers(1, 11))):
        n = _samples(_lu(rng, 0.02, 0.25), sr, max_n)
        gap = int(_lu(rng, 0.01, 0.15) * sr)
        if used + n + gap > max_n and pieces:
            break
        start = _lu(rng, 1200, 6000)
        freq = _sweep_freq(start, start * _lu(rng, 0.5, 2.0), n, exponential=True)
        t = np.arange(n) / sr
        freq = _fcap(freq * (1 + rng.uniform(0.0, 0.12) * np.sin(2 * np.pi * rng.uniform(20, 80) * t)), sr)
        env = np.sin(np.pi * np.arange(n) / n) ** rng.uniform(0.5, 2.0)
        pieces += [np.sin(_phase(freq, sr)) * env * rng.uniform(0.5, 1.0), np.zeros(gap)]
        used += n + gap
    return np.concatenate(pieces[:-1])[:max_n]


def _note(rng: Rng, sr: int, max_n: int) -> np.ndarray:
    """Harmonic tone 100 Hz-1 kHz, 3-12 partials, slight stretch, optional vibrato; plucked or sustained."""
    n = _samples(_lu(rng, 0.25, 1.8), sr, max_n)
    f0 = _lu(rng, 100, 1000)
    k = np.arange(1, int(rng.integers(3, 13)) + 1)
    stretch = np.sqrt(1 + _lu(rng, 1e-5, 3e-3) * k ** 2)
    amps = rng.uniform(0.35, 0.9) ** (k - 1) * rng.uniform(0.3, 1.0, size=len(k))
    t = np.arange(n) / sr
    vibrato = 1 + (rng.random() < 0.4) * _lu(rng, 0.002, 0.015) * np.sin(2 * np.pi * rng.uniform(4, 7) * t)
    phase = _phase(f0 * vibrato, sr)
    keep = k * stretch * f0 < 0.45 * sr
    partials = np.sin((k * stretch)[keep, None] * phase[None, :] + rng.uniform(0, 2 * np.pi, size=(keep.sum(), 1)))
    plucked = rng.random() < 0.5
    if plucked:  # higher partials die faster, like a string
        tau = _lu(rng, 0.15, 1.5) / (1 + rng.uniform(0.0, 0.3) * (k[keep, None] - 1))
        partials = partials * np.exp(-t[None, :] / tau)
    tone = (amps[keep, None] * partials).sum(axis=0)
    return tone * _envelope(rng, n, sr, (0.003, 0.02) if plucked else (0.01, 0.2), (0.5, 3.0), p_sustain=0.5)


_BELL_RATIOS = np.array([0.56, 0.92, 1.0, 1.19, 1.71, 2.0, 2.74, 3.0, 3.76, 4.07])


def _bell(rng: Rng, sr: int, max_n: int) -> np.ndarray:
    """Inharmonic partials (bell ratios or strongly stretched harmonics), sharp attack, exponential decays."""
    f0 = _lu(rng, 150, 1500)
    if rng.random() < 0.6:
        ratios = rng.choice(_BELL_RATIOS, size=int(rng.integers(4, 10)), replace=False) * rng.uniform(0.95, 1.05, 1)
        ratios = ratios * rng.uniform(0.97, 1.03, size=len(ratios))
    else:
        k = np.arange(1, int(rng.integers(4, 10)) + 1)
        ratios = k * np.sqrt(1 + _lu(rng, 4e-3, 5e-2) * k ** 2)
    freqs = f0 * ratios * min(1.0, 0.4 * sr / (f0 * ratios.min()))  # lowest partial always audible
    freqs = freqs[freqs < 0.45 * sr]
    tau0 = _lu(rng, 0.2, 2.5)
    n = _samples(min(4 * tau0, 2.0), sr, max_n)
    t = np.arange(n) / sr
    tau = tau0 * (freqs.min() / freqs) ** rng.uniform(0.3, 1.0)
    beat = 1 + rng.uniform(0.0, 0.5) * np.cos(2 * np.pi * rng.uniform(0.5, 4.0, size=(len(freqs), 1)) * t)
    partials = np.sin(2 * np.pi * freqs[:, None] * t + rng.uniform(0, 2 * np.pi, size=(len(freqs), 1)))
    tone = (rng.uniform(0.1, 1.0, size=(len(freqs), 1)) * partials * beat * np.exp(-t / tau[:, None])).sum(axis=0)
    attack = np.minimum(t / _lu(rng, 0.001, 0.01), 1.0)
    fade = np.clip((n - np.arange(n)) / (0.005 * sr), 0.0, 1.0)
    return tone * attack * fade


def _siren(rng: Rng, sr: int, max_n: int) -> np.ndarray:
    """Slow FM (0.3-5 Hz, depth 3-40 %) of a 400 Hz-1.6 kHz tone with 1-5 harmonics, sine or sawtooth sweep."""
    n = _samples(_lu(rng, 0.6, 2.0), sr, max_n)
    t = np.arange(n) / sr
    lfo_phase = 2 * np.pi * _lu(rng, 0.3, 5.0) * t + rng.uniform(0, 2 * np.pi)
    lfo = np.sin(lfo_phase) if rng.random() < 0.6 else signal.sawtooth(lfo_phase, rng.uniform(0.5, 1.0))
    freq = _lu(rng, 400, 1600) * (1 + _lu(rng, 0.03, 0.4) * lfo)
    amps = np.concatenate([[1.0], rng.uniform(0.0, 0.7, size=int(rng.integers(0, 5)))])
    tone = _harmonics(_phase(freq, sr), amps, sr, freq)
    return tone * _envelope(rng, n, sr, (0.01, 0.3), (1.0, 3.0), p_sustain=0.8)


def _engine(rng: Rng, sr: int, max_n: int) -> np.ndarray:
    """Low harmonic stack (25-140 Hz) with drift, amplitude modulation 2-30 Hz and low-passed noise."""
    n = _samples(_lu(rng, 0.6, 2.0), sr, max_n)
    t = np.arange(n) / sr
    f0 = _lu(rng, 25, 140) * (1 + rng.uniform(-0.05, 0.05) * t / max(t[-1], 1e-3))
    k = np.arange(1, int(min(2000 / f0.max(), 40)) + 1)
    amps = rng.uniform(0.2, 1.0, size=len(k)) / k ** rng.uniform(0.3, 1.5)
    tone = _harmonics(_phase(f0, sr), amps, sr, f0)
    tone *= 1 + rng.uniform(0.1, 0.8) * np.sin(2 * np.pi * _lu(rng, 2, 30) * t)
    rumble = _lowpass(rng.standard_normal(n), sr, _lu(rng, 200, 1500))
    tone = tone / _rms(tone) + rng.uniform(0.0, 0.6) * rumble / _rms(rumble)
    return tone * _envelope(rng, n, sr, (0.05, 0.5), (1.0, 3.0), p_sustain=0.9)


def _drum(rng: Rng, sr: int, max_n: int) -> np.ndarray:
    """1-3 hits of a decaying low sine sweep plus a band-passed noise snap."""
    hits = []
    for _ in range(1 if rng.random() < 0.8 else int(rng.integers(2, 4))):
        tau = _lu(rng, 0.04, 0.5)
        n = _samples(5 * tau, sr, max_n)
        t = np.arange(n) / sr
        f_start = _lu(rng, 80, 400)
        f_end = f_start * rng.uniform(0.3, 0.8)
        freq = f_end + (f_start - f_end) * np.exp(-t / _lu(rng, 0.01, 0.08))
        body = np.sin(_phase(freq, sr)) * np.exp(-t / tau)
        snap = _bandpass(rng.standard_normal(n), sr, _lu(rng, 500, 6000), rng.uniform(1, 4))
        snap *= np.exp(-t / _lu(rng, 0.005, 0.1))
        hits.append(body + _lu(rng, 0.05, 1.0) * snap / _rms(snap) * _rms(body))
        hits.append(np.zeros(int(_lu(rng, 0.05, 0.3) * sr)))
    return np.concatenate(hits[:-1])[:max_n]


def _ticks(rng: Rng, sr: int, max_n: int) -> np.ndarray:
    """Click train, 3-40 clicks/s with timing jitter; each click a 0.5-10 ms resonance at 0.8-7 kHz."""
    n = _samples(_lu(rng, 0.3, 2.0), sr, max_n)
    period = 1 / _lu(rng, 3, 40)
    times = np.arange(0, n / sr, period)
    times = times + rng.uniform(0, 0.3) * period * rng.uniform(-1, 1, size=len(times))
    idx = np.clip((times * sr).astype(int), 0, n - 1)
    train = np.zeros(n)
    np.add.at(train, idx, rng.uniform(0.6, 1.0, size=len(idx)))
    click = _resonance(sr, _lu(rng, 800, 7000), _lu(rng, 0.0005, 0.01))
    return signal.fftconvolve(train, click)[:n]


def _noise_burst(rng: Rng, sr: int, max_n: int) -> np.ndarray:
    """Band-pass noise (0.3-6 kHz centre, 0.3-3 octaves wide), 50 ms-1.6 s, sometimes fluttering."""
    n = _samples(_lu(rng, 0.05, 1.6), sr, max_n)
    noise = _bandpass(rng.standard_normal(n), sr, _lu(rng, 300, 6000), _lu(rng, 0.3, 3.0), int(rng.integers(1, 4)))
    if rng.random() < 0.3:
        flutter = _lowpass(rng.standard_normal(n), sr, _lu(rng, 5, 40))
        noise *= 1 + 0.8 * flutter / (np.max(np.abs(flutter)) + 1e-12)
    return noise * _envelope(rng, n, sr, (0.002, 0.2), (0.03, 0.8), p_sustain=0.5)


def _rain(rng: Rng, sr: int, max_n: int) -> np.ndarray:
    """Dense random drops (40-600 /s, 1.5-7 kHz ringing) over a filtered-noise bed."""
    n = _samples(_lu(rng, 0.6, 2.0), sr, max_n)
    count = rng.poisson(_lu(rng, 40, 600) * n / sr)
    train = np.zeros(n)
    np.add.at(train, rng.integers(0, n, size=count), rng.lognormal(0.0, 0.7, size=count))
    drops = signal.fftconvolve(train, _resonance(sr, _lu(rng, 1500, 7000), _lu(rng, 0.0003, 0.003)))[:n]
    bed = _bandpass(rng.standard_normal(n), sr, _lu(rng, 500, 5000), _lu(rng, 1.0, 4.0))
    rain = drops / _rms(drops) + _lu(rng, 0.1, 1.5) * bed / _rms(bed)
    return rain * _envelope(rng, n, sr, (0.05, 0.3), (1.0, 3.0), p_sustain=1.0)


def _speech(rng: Rng, sr: int, max_n: int) -> np.ndarray:
    """1-6 syllables: a sawtooth-like glottal source (80-300 Hz, drifting pitch) through three random formants."""
    pieces = []
    used = 0
    f0 = _lu(rng, 80, 300)
    for _ in range(int(rng.integers(1, 7))):
        n = _samples(_lu(rng, 0.06, 0.35), sr, max_n)
        gap = int(_lu(rng, 0.02, 0.2) * sr)
        if used + n + gap > max_n and pieces:
            break
        pitch = _sweep_freq(f0 * rng.uniform(0.85, 1.15), f0 * rng.uniform(0.8, 1.1), n, exponential=True)
        pitch *= 1 + 0.01 * rng.standard_normal(n).cumsum() / np.sqrt(n)
        k = np.arange(1, int(0.45 * sr / pitch.max()) + 1)
        source = _harmonics(_phase(pitch, sr), 1 / k, sr, pitch)  # band-limited sawtooth
        source += rng.uniform(0.0, 0.3) * rng.standard_normal(n)
        voice = np.zeros(n)
        for low, high in [(300, 850), (850, 2400), (2300, 3300)]:
            freq = _fcap(_lu(rng, low, high), sr)
            r = np.exp(-np.pi * _lu(rng, 60, 200) / sr)
            voice += signal.lfilter([1 - r], [1, -2 * r * np.cos(2 * np.pi * freq / sr), r * r], source)
        voice *= np.sin(np.pi * np.arange(n) / n) ** rng.uniform(0.3, 1.5)
        pieces += [voice, np.zeros(gap)]
        used += n + gap
    return np.concatenate(pieces[:-1])[:max_n]


SYNTHS: list[Callable[[Rng, int, int], np.ndarray]] = [
    _chirp_up, _chirp_down, _bird, _note, _bell, _siren, _engine, _drum, _ticks, _noise_burst, _rain, _speech,
]
