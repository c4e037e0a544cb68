"""Audio test-data factories and the shared good/bad audio corpus (a pytest plugin module).

Plain functions (``synth``, ``write_tone``, ``write_raw_wav``, ``truncate_file``,
``make_audio_cases``) for tests that need a specific file, and the session-scoped fixture
``bad_audio_dir``: one file per awkward case of ``AUDIO_CASES``, each with its expected outcome,
so that audio and sharding tests agree on them (``from fixtures_audio import AUDIO_CASES``
gives the names at collection time, e.g. to parametrize).

``synth`` makes music-like signals: a melody of notes (harmonics 1/k, attack and decay) over a
fifth-below voice, plus decaying noise bursts like hi-hats. With ``noise=0`` the signal is
band-limited (below ``MAX_HZ``) and analytic, so the same call at another rate gives the ideal
resampled reference.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

MAX_HZ = 3500.0  # below the Nyquist frequency of the lowest accepted rate (8 kHz)
NOTE_SECONDS = 0.25
HAT_SECONDS = 0.125
HARMONICS = 8
WRITE_BLOCK_SECONDS = 30.0
_SCALE = np.array([0, 2, 4, 7, 9, 12, 14, 16])  # pentatonic-ish semitones above the root


def synth(
    seconds: float,
    sr: int = 44100,
    *,
    channels: int = 1,
    noise: float = 0.05,
    seed: int = 0,
    start: int = 0,
) -> np.ndarray:
    """Music-like float32 audio ``[n, channels]`` (peak about 0.5), sample ``start`` onwards.

    Blocks made with consecutive ``start`` values join seamlessly. Channel ``c`` is the same
    signal with gain ``1 - 0.1 c``, so the mono mix is the signal times the mean gain.
    """
    n = round(seconds * sr)
    t = (start + np.arange(n)) / sr
    note = (t // NOTE_SECONDS).astype(np.int64)
    rng = np.random.default_rng(seed)
    roots = 110.0 * 2 ** (rng.integers(0, 12) / 12)
    steps = _SCALE[(note * 7 + seed + (note * note) % 5) % len(_SCALE)]
    tau = t - note * NOTE_SECONDS  # time since the note started
    # 10 ms attack, decay, 10 ms release: continuous across note boundaries.
    env = np.minimum(np.minimum(tau, NOTE_SECONDS - tau) / 0.01, 1.0) * np.exp(-tau / 0.15)
    x = np.zeros(n)
    for f0, gain in ((roots * 2 ** (steps / 12) * 2, 0.6), (roots * 2 ** ((steps - 7) / 12), 0.4)):
        theta = 2 * np.pi * f0 * tau
        # sin(k theta) by the Chebyshev recurrence: cheap for long files.
        two_cos, prev, cur = 2 * np.cos(theta), np.zeros(n), np.sin(theta)
        for k in range(1, HARMONICS + 1):
            x += gain * np.where(k * f0 < MAX_HZ, cur / k, 0.0)
            prev, cur = cur, two_cos * cur - prev
    x *= 0.5 / 2.8 * env  # 2.8 ~ sum of 1/k harmonic weights: peak stays near 0.5
    if noise:
        hat = t - (t // HAT_SECONDS) * HAT_SECONDS
        burst = np.random.default_rng([seed, start]).standard_normal(n)
        x += noise * burst * np.exp(-hat / 0.02)
    gains = 1.0 - 0.1 * np.arange(channels)
    return (x[:, None] * gains).astype(np.float32)


def write_tone(
    path: str | os.PathLike,
    seconds: float,
    sr: int = 44100,
    *,
    channels: int = 1,
    subtype: str | None = None,
    format: str | None = None,
    noise: float = 0.05,
    seed: int = 0,
    loop_seconds: float | None = None,
) -> Path:
    """Write ``synth`` audio with soundfile, block by block (long files use little memory).

    The format comes from the extension (``.oga`` -> OGG) unless ``format`` is given.
    ``loop_seconds`` repeats the first that many seconds instead of synthesising everything
    (fast for tracks of many minutes).
    """
    path = Path(path)
    if format is None and path.suffix.lower() == ".oga":
        format = "OGG"
    total = round(seconds * sr)
    block = round((loop_seconds or WRITE_BLOCK_SECONDS) * sr)
    loop = None
    with sf.SoundFile(path, "w", sr, channels, subtype=subtype, format=format) as f:
        for start in range(0, total, block):
            n = min(block, total - start)
            if loop is None or not loop_seconds:
                loop = synth(n / sr, sr, channels=channels, noise=noise, seed=seed, start=start)
            f.write(loop[:n])
    return path


def write_raw_wav(
    path: str | os.PathLike, samples: np.ndarray, sr: int, *, channels: int | None = None
) -> Path:
    """Write 16-bit PCM WAV bytes by hand: any rate or channel count, even ones soundfile refuses.

    ``samples`` is float ``[n, ch]``; ``channels`` overrides the count in the header only.
    """
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
    ch = samples.shape[1] if channels is None else channels
    fmt = struct.pack("<HHIIHH", 1, ch, sr, sr * ch * 2, ch * 2, 16)
    head = b"RIFF" + struct.pack("<I", 36 + len(pcm)) + b"WAVE"
    head += b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(pcm))
    Path(path).write_bytes(head + pcm)
    return Path(path)


def truncate_file(path: str | os.PathLike, fraction: float) -> Path:
    """Cut a file to ``fraction`` of its bytes, in place (a broken download)."""
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * fraction)])
    return Path(path)


@dataclass(frozen=True)
class AudioCase:
    """One file of the shared corpus and what decoding it must give."""

    path: Path
    error: str | None  # musicoder.audio error class name, or None when accepted
    truncated: bool = False
    seconds: tuple[float, float] | None = None  # accepted: decoded seconds lie in [lo, hi]


class AudioCases(dict):
    """``name -> AudioCase``, with ``root``: the folder holding all of them."""

    root: Path


def _nan_at_3s(path: Path) -> None:
    x = synth(5.0, 22050)
    x[3 * 22050] = np.nan
    sf.write(path, x, 22050, subtype="FLOAT")


# name -> (writer, error class name or None, truncated, (min, max) decoded seconds if accepted)
AUDIO_CASES = {
    # Bad input, each with its typed error.
    "zero_bytes.wav": (lambda p: p.write_bytes(b""), "UnreadableAudioError", False, None),
    "header_only.wav": (
        lambda p: write_raw_wav(p, np.zeros((0, 1)), 44100),
        "EmptyAudioError",
        False,
        None,
    ),
    "random_bytes.mp3": (
        lambda p: p.write_bytes(np.random.default_rng(7).bytes(50_000)),
        "UnreadableAudioError",
        False,
        None,
    ),
    "text.flac": (lambda p: p.write_text("not audio\n" * 100), "UnreadableAudioError", False, None),
    "one_second.wav": (lambda p: write_tone(p, 1.0), "TooShortError", False, None),
    "silence.flac": (
        lambda p: sf.write(p, np.zeros(3 * 44100), 44100),
        "SilentAudioError",
        False,
        None,
    ),
    "rate_4k.wav": (
        lambda p: write_raw_wav(p, synth(3.0, 4000), 4000),
        "SampleRateError",
        False,
        None,
    ),
    "rate_250k.wav": (
        lambda p: write_raw_wav(p, synth(3.0, 250_000), 250_000),
        "SampleRateError",
        False,
        None,
    ),
    "channels_5000.wav": (
        lambda p: write_raw_wav(p, synth(1.0, 8000), 8000, channels=5000),
        "UnreadableAudioError",
        False,
        None,
    ),
    "truncated_short.wav": (
        lambda p: truncate_file(write_tone(p, 6.0), 0.2),
        "TooShortError",
        False,
        None,
    ),
    # Broken part-way with a usable prefix: accepted and flagged truncated.
    "truncated.wav": (lambda p: truncate_file(write_tone(p, 6.0), 0.6), None, True, (3.5, 3.7)),
    "truncated.flac": (lambda p: truncate_file(write_tone(p, 6.0), 0.6), None, True, (2.0, 3.7)),
    "truncated.ogg": (lambda p: truncate_file(write_tone(p, 6.0), 0.6), None, True, (2.0, 4.5)),
    "truncated.mp3": (lambda p: truncate_file(write_tone(p, 6.0), 0.6), None, True, (2.0, 4.5)),
    "nan_at_3s.wav": (_nan_at_3s, None, True, (3.0, 3.0)),
    # Odd but good.
    "six_channels.wav": (lambda p: write_tone(p, 3.0, channels=6), None, False, (3.0, 3.0)),
    "hires_96k_24bit.flac": (
        lambda p: write_tone(p, 3.0, 96000, channels=2, subtype="PCM_24"),
        None,
        False,
        (3.0, 3.0),
    ),
    "UPPER.WAV": (lambda p: write_tone(p, 3.0, 48000), None, False, (3.0, 3.0)),
    "name.with.dots and spaces ñ 音楽.ogg": (lambda p: write_tone(p, 3.0), None, False, (3.0, 3.0)),
    "vorbis.oga": (lambda p: write_tone(p, 3.0, 32000, channels=2), None, False, (3.0, 3.0)),
    "stereo.mp3": (lambda p: write_tone(p, 3.0, channels=2), None, False, (3.0, 3.0)),
}


def make_audio_cases(root: str | os.PathLike) -> AudioCases:
    """Write every file of ``AUDIO_CASES`` into ``root`` and describe them."""
    cases = AudioCases()
    cases.root = Path(root)
    cases.root.mkdir(parents=True, exist_ok=True)
    for name, (write, error, truncated, seconds) in AUDIO_CASES.items():
        write(cases.root / name)
        cases[name] = AudioCase(cases.root / name, error, truncated, seconds)
    return cases


@pytest.fixture(scope="session")
def bad_audio_dir(tmp_path_factory: pytest.TempPathFactory) -> AudioCases:
    """The shared corpus of awkward audio files (see ``make_audio_cases``), written once."""
    return make_audio_cases(tmp_path_factory.mktemp("audio_cases"))
