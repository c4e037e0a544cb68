"""Instrument voices and effects for procedural music (the demo corpus), vectorized in numpy.

Each pitched voice maps (frequency, seconds, sample rate, brightness, rng) to a mono float64
note with its own envelope, peak about 1; drum voices take no frequency. The timbres are
cheap classics: additive harmonics with per-partial decay (piano, strings, synth, vocal
formants), Karplus-Strong plucked strings (guitar, bass), FM (bells), shaped noise (drums).
They only need to sound different from each other in ways a music encoder can learn, fast
enough that tests and `make demo` can render hours of audio in seconds.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import fft  # scipy.signal would add seconds of import time to every worker

NYQUIST_FRACTION = 0.45  # keep partials below 0.45 * sample rate (no aliasing)
RELEASE_SECONDS = 0.012  # click-free note ends
TABLE_SIZE = 4096  # wavetable points per period; linear interpolation error < 0.1% at 40 partials
# (F1, F2, F3) in Hz for five sung vowels.
VOWELS = (
    (730, 1090, 2440),
    (530, 1840, 2480),
    (270, 2290, 3010),
    (570, 840, 2410),
    (300, 870, 2240),
)

Voice = Callable[[float, float, int, float, np.random.Generator], np.ndarray]


def midi_to_hz(midi: float) -> float:
    """Equal-tempered frequency of a MIDI note number (A4 = 69 = 440 Hz)."""
    return 440.0 * 2.0 ** ((midi - 69) / 12)


def _time(seconds: float, sr: int) -> np.ndarray:
    return np.arange(max(1, round(seconds * sr))) / sr


def _envelope(t: np.ndarray, attack: float, decay: float | None = None) -> np.ndarray:
    """Linear attack, optional exponential decay (time constant), short release at the end."""
    env = np.minimum(1.0, t / max(attack, 1e-4))
    if decay is not None:
        env = env * np.exp(-t / decay)
    release = np.clip((t[-1] - t) / RELEASE_SECONDS, 0.0, 1.0)
    return env * release


def _harmonic(
    freq: float,
    t: np.ndarray,
    sr: int,
    amps: np.ndarray,
    *,
    vibrato: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """Sum of harmonics k*freq with amplitudes amps[k-1], read from a one-period wavetable.

    All partials share one phase, so a table lookup costs the same for 2 or 40 partials;
    partials at or above NYQUIST_FRACTION * sr are left out of the table (no aliasing).
    """
    rate, depth = vibrato
    k = np.arange(1, len(amps) + 1, dtype=np.float64)
    keep = k * freq * (1 + depth) < NYQUIST_FRACTION * sr
    spectrum = np.zeros(TABLE_SIZE // 2 + 1, dtype=np.complex128)
    spectrum[1 : len(amps) + 1] = np.where(keep, -0.5j * TABLE_SIZE * amps, 0.0)
    table = np.fft.irfft(spectrum, n=TABLE_SIZE)  # sum_k amps[k-1] * sin(2 pi k j / TABLE_SIZE)
    table = np.append(table, table[0])  # (TABLE_SIZE + 1,): wraps for the interpolation
    cycles = freq * t  # phase in periods, (n,)
    if depth:
        cycles = cycles + (freq * depth / (2 * np.pi * rate)) * np.sin(2 * np.pi * rate * t)
    position = (cycles % 1.0) * TABLE_SIZE
    index = position.astype(np.int64)
    frac = position - index
    return table[index] * (1.0 - frac) + table[index + 1] * frac


def _tilt(count: int, brightness: float, slope: float = 1.0) -> np.ndarray:
    """Harmonic amplitudes 1/k^slope, darker (steeper) for low brightness in [0, 1]."""
    k = np.arange(1, count + 1, dtype=np.float64)
    return k ** -(slope + 1.5 * (1.0 - brightness))


def _normalize(x: np.ndarray) -> np.ndarray:
    peak = np.abs(x).max()
    return x / peak if peak > 0 else x


def piano(
    freq: float, seconds: float, sr: int, brightness: float, rng: np.random.Generator
) -> np.ndarray:
    t = _time(seconds, sr)
    # Upper partials die away faster than the fundamental: a bright layer over a dull one.
    decay = 1.0 / (0.6 + freq / 400)
    bright = _harmonic(freq, t, sr, _tilt(14, brightness)) * np.exp(-t / (0.25 * decay))
    dull = _harmonic(freq, t, sr, np.array([1.0, 0.3, 0.1])) * np.exp(-t / decay)
    return _normalize((bright + dull) * _envelope(t, 0.003))


def strings(
    freq: float, seconds: float, sr: int, brightness: float, rng: np.random.Generator
) -> np.ndarray:
    t = _time(seconds, sr)
    amps = _tilt(16, brightness, slope=1.0)
    tone = _harmonic(freq, t, sr, amps, vibrato=(5.5, 0.004))
    tone += _harmonic(freq * 1.004, t, sr, amps, vibrato=(4.9, 0.004))  # a second desk: chorus
    return _normalize(tone * _envelope(t, min(0.18, seconds / 3)))


def synth(
    freq: float, seconds: float, sr: int, brightness: float, rng: np.random.Generator
) -> np.ndarray:
    t = _time(seconds, sr)
    amps = _tilt(20, brightness, slope=0.9)
    amps[1::2] *= 0.35  # between saw and square
    tone = _harmonic(freq, t, sr, amps) + _harmonic(freq * 1.007, t, sr, amps)  # detuned pair
    return _normalize(tone * _envelope(t, 0.006, decay=1.5))


def vocal(
    freq: float, seconds: float, sr: int, brightness: float, rng: np.random.Generator
) -> np.ndarray:
    t = _time(seconds, sr)
    formants = np.array(VOWELS[int(rng.integers(len(VOWELS)))], dtype=np.float64)
    harmonics = freq * np.arange(1, 40)
    widths = np.array([90.0, 120.0, 160.0]) * (1 + brightness)
    peaks = np.exp(-(((harmonics[:, None] - formants[None, :]) / widths) ** 2))  # (K, 3)
    amps = peaks @ np.array([1.0, 0.6, 0.35]) + 0.08 / np.arange(1, 40)  # formants + a weak tail
    tone = _harmonic(freq, t, sr, amps, vibrato=(5.0, 0.012))
    return _normalize(tone * _envelope(t, 0.06))


def bells(
    freq: float, seconds: float, sr: int, brightness: float, rng: np.random.Generator
) -> np.ndarray:
    t = _time(seconds, sr)
    ratio = 3.5 if brightness > 0.5 else 1.4  # inharmonic carrier:modulator ratios
    index = (1.5 + 3 * brightness) * np.exp(-t / 0.4)
    tone = np.sin(2 * np.pi * freq * t + index * np.sin(2 * np.pi * freq * ratio * t))
    return tone * _envelope(t, 0.002, decay=1.2)


def _karplus_strong(
    freq: float, n: int, sr: int, brightness: float, rng: np.random.Generator, damping: float
) -> np.ndarray:
    """Plucked string: a noise burst circulating in a delay line with a two-tap lowpass."""
    period = max(2, round(sr / freq))
    burst = rng.uniform(-1.0, 1.0, period)
    smooth = 0.15 + 0.8 * brightness  # darker pluck: lowpass the excitation
    burst = one_pole(burst, smooth)
    burst -= burst.mean()  # no DC: the loop would keep it ringing as an offset
    out = np.zeros(n + period + 1)
    out[:period] = burst
    for start in range(period, n + 1, period):  # each block depends only on the previous one
        stop = min(start + period, n + period + 1)
        prev = out[start - period : stop - period]
        prev1 = (
            out[start - period - 1 : stop - period - 1] if start > period else np.r_[0.0, prev[:-1]]
        )
        out[start:stop] = damping * 0.5 * (prev + prev1)
    return out[:n]


def guitar(
    freq: float, seconds: float, sr: int, brightness: float, rng: np.random.Generator
) -> np.ndarray:
    t = _time(seconds, sr)
    tone = _karplus_strong(freq, len(t), sr, brightness, rng, damping=0.996)
    return _normalize(tone * _envelope(t, 0.001))


def bass(
    freq: float, seconds: float, sr: int, brightness: float, rng: np.random.Generator
) -> np.ndarray:
    """Electric/upright bass: a darker, more damped pluck plus a clean fundamental."""
    t = _time(seconds, sr)
    tone = _karplus_strong(freq, len(t), sr, 0.5 * brightness, rng, damping=0.993)
    tone = lowpass(_normalize(tone), 8 * freq + 300, sr)  # a bass pluck has no hiss
    tone = _normalize(tone) + 0.6 * np.sin(2 * np.pi * freq * t) * np.exp(-t / 0.8)
    return _normalize(tone * _envelope(t, 0.002))


def sub_bass(
    freq: float, seconds: float, sr: int, brightness: float, rng: np.random.Generator
) -> np.ndarray:
    """808-style: a sine whose pitch drops onto the note, with a long decay."""
    t = _time(seconds, sr)
    inst = freq * (1 + 0.6 * np.exp(-t / 0.03))
    tone = np.sin(2 * np.pi * np.cumsum(inst) / sr)
    tone = np.tanh((1.0 + 2 * brightness) * tone)  # a little saturation adds audible harmonics
    return tone * _envelope(t, 0.002, decay=0.9)


def kick(seconds: float, sr: int, tone: float, rng: np.random.Generator) -> np.ndarray:
    t = _time(seconds, sr)
    inst = 48 + 110 * np.exp(-t / (0.02 + 0.03 * tone))
    body = np.sin(2 * np.pi * np.cumsum(inst) / sr) * np.exp(-t / (0.12 + 0.25 * tone))
    click = rng.standard_normal(len(t)) * np.exp(-t / 0.003) * 0.4
    return _normalize(body + click)


def snare(seconds: float, sr: int, tone: float, rng: np.random.Generator) -> np.ndarray:
    t = _time(seconds, sr)
    noise = np.diff(rng.standard_normal(len(t) + 1)) * np.exp(-t / (0.05 + 0.12 * tone))
    body = np.sin(2 * np.pi * (170 + 60 * tone) * t) * np.exp(-t / 0.05)
    return _normalize(noise + 0.8 * body)


def hihat(seconds: float, sr: int, tone: float, rng: np.random.Generator) -> np.ndarray:
    t = _time(seconds, sr)
    noise = np.diff(rng.standard_normal(len(t) + 2), n=2)  # second difference: mostly highs
    return _normalize(noise * np.exp(-t / (0.015 + 0.06 * tone)))


def one_pole(x: np.ndarray, alpha: float) -> np.ndarray:
    """``y[n] = alpha * x[n] + (1 - alpha) * y[n - 1]``, computed in the frequency domain.

    Zero padding past the point where the impulse response has decayed below 1e-7 makes the
    circular convolution equal the causal filter.
    """
    pad = int(np.ceil(np.log(1e-7) / np.log1p(-alpha))) if alpha < 1 else 0
    n = fft.next_fast_len(len(x) + pad, real=True)
    omega = 2 * np.pi * np.arange(n // 2 + 1) / n
    response = alpha / (1.0 - (1.0 - alpha) * np.exp(-1j * omega))
    return fft.irfft(fft.rfft(x, n) * response, n)[: len(x)]


def lowpass(x: np.ndarray, cutoff_hz: float, sr: int) -> np.ndarray:
    """One-pole lowpass (6 dB/octave) at `cutoff_hz`: the tone control of a track."""
    return one_pole(x, 1.0 - np.exp(-2 * np.pi * min(cutoff_hz, 0.49 * sr) / sr))


def convolve(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Causal linear convolution of x with a kernel, cut to ``len(x)`` (FFT based)."""
    n = fft.next_fast_len(len(x) + len(kernel) - 1, real=True)
    return fft.irfft(fft.rfft(x, n) * fft.rfft(kernel, n), n)[: len(x)]


def distort(x: np.ndarray, drive: float) -> np.ndarray:
    """Soft clipping; drive 0 leaves the signal unchanged."""
    if drive <= 0:
        return x
    return np.tanh((1 + drive) * x) / np.tanh(1 + drive)


def smear(
    x: np.ndarray, sr: int, *, wet: float, decay: float, rng: np.random.Generator
) -> np.ndarray:
    """Reverb-like smear: convolution with exponentially decaying, darkened noise."""
    if wet <= 0:
        return x
    t = _time(min(3 * decay, 2.5), sr)
    ir = lowpass(rng.standard_normal(len(t)) * np.exp(-t / decay), 3500.0, sr)
    ir /= np.sqrt(np.sum(ir**2))
    tail = convolve(x, ir)
    return (1 - wet) * x + wet * tail


PITCHED: dict[str, Voice] = {
    "piano": piano,
    "strings": strings,
    "synth": synth,
    "vocal": vocal,
    "bells": bells,
    "guitar": guitar,
    "bass": bass,
    "sub_bass": sub_bass,
}
DRUMS: dict[str, Callable[[float, int, float, np.random.Generator], np.ndarray]] = {
    "kick": kick,
    "snare": snare,
    "hihat": hihat,
}
