"""Feature presets and their parameters (DESIGN §4): `FeatureConfig`, channel layout and frame
counts, and the CQT's octave layout that a config must satisfy. Pure Python and numpy: the
filterbanks (`filters`) and the extraction (`extract`) build on it, never the other way round.
"""

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

MUSICODER324 = "musicoder324"
LOGMEL128 = "logmel128"
PRESET_BLOCKS = {MUSICODER324: ("chroma", "mfcc", "delta", "mel", "cqt"), LOGMEL128: ("mel",)}
C1_HZ = 32.70319566257483
HANN_BANDWIDTH = 1.50018310546875  # librosa.filters.window_bandwidth("hann")


@dataclass
class FeatureConfig:
    """Feature parameters; the preset picks the blocks, the fields give their sizes.

    Attributes:
        preset: ``musicoder324`` (chroma, MFCC, delta, log-mel, log-CQT) or ``logmel128``.
        sample_rate: Input rate in Hz; the waveform must already be at this rate.
        n_fft: STFT window (Hann) length in samples.
        hop_length: Frame hop in samples; divisible by 2 per CQT octave.
        n_mels: Mel bands (Slaney scale and area normalisation, 0 Hz to Nyquist).
        n_mfcc: MFCCs, and delta MFCCs.
        n_chroma: Chroma bins.
        delta_width: Savitzky-Golay window (odd) of the delta MFCCs, in frames.
        top_db: Dynamic range kept below each item's loudest mel cell before the DCT.
        cqt_bins: CQT bins.
        cqt_bins_per_octave: CQT bins per octave.
        cqt_fmin: Centre frequency of the lowest CQT bin in Hz.
        log_eps: Offset inside the log of mel and CQT magnitudes.
    """

    preset: Literal["musicoder324", "logmel128"] = MUSICODER324
    sample_rate: int = 22050
    n_fft: int = 2048
    hop_length: int = 1024
    n_mels: int = 128
    n_mfcc: int = 20
    n_chroma: int = 12
    delta_width: int = 9
    top_db: float = 80.0
    cqt_bins: int = 144
    cqt_bins_per_octave: int = 24
    cqt_fmin: float = C1_HZ
    log_eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.preset not in PRESET_BLOCKS:
            raise ValueError(
                f"feature.preset: unknown preset {self.preset!r}, expected one of "
                f"{sorted(PRESET_BLOCKS)}"
            )
        for key in (
            "sample_rate",
            "n_fft",
            "hop_length",
            "n_mels",
            "n_mfcc",
            "n_chroma",
            "cqt_bins",
            "cqt_bins_per_octave",
            "cqt_fmin",
            "top_db",
            "log_eps",
        ):
            if getattr(self, key) <= 0:
                raise ValueError(f"feature.{key}: must be positive, got {getattr(self, key)}")
        if self.n_mfcc > self.n_mels:
            raise ValueError(f"feature.n_mfcc: {self.n_mfcc} exceeds n_mels={self.n_mels}")
        if self.delta_width < 3 or self.delta_width % 2 == 0:
            raise ValueError(f"feature.delta_width: must be odd and >= 3, got {self.delta_width}")
        if "cqt" in PRESET_BLOCKS[self.preset]:
            plan = cqt_plan(self)
            if plan.cutoff_hz >= self.sample_rate / 2:
                raise ValueError(
                    f"feature.cqt_bins: top CQT bin reaches {plan.cutoff_hz:.0f} Hz, "
                    f"above Nyquist {self.sample_rate / 2:.0f} Hz"
                )
            halvings = plan.early + plan.octaves - 1
            if self.hop_length % (1 << halvings):
                raise ValueError(
                    f"feature.hop_length: {self.hop_length} must be divisible by "
                    f"2**{halvings} for a {plan.octaves}-octave CQT"
                )


@dataclass(frozen=True)
class CqtPlan:  # librosa's octave-wise CQT layout
    octaves: int  # octaves spanned (the lowest may be partial)
    early: int  # halvings before the top octave (its filters need no more bandwidth)
    freqs: np.ndarray  # (bins_per_octave,) top-octave centre frequencies in Hz
    q: float  # quality factor: filter length = q * rate / frequency
    cutoff_hz: float  # highest frequency any filter reaches


def cqt_plan(cfg: FeatureConfig) -> CqtPlan:
    """Octave layout of librosa's ``vqt`` (gamma 0, hann, filter_scale 1) for ``cfg``."""
    bpo = cfg.cqt_bins_per_octave
    octaves = math.ceil(cfg.cqt_bins / bpo)
    top = cfg.cqt_fmin * 2.0 ** ((cfg.cqt_bins - bpo + np.arange(bpo)) / bpo)
    ratio = 2.0 ** (2 / bpo)
    q = (ratio + 1) / (ratio - 1)  # 1 / librosa's relative bandwidth alpha
    cutoff = float(top[-1] * (1 + 0.5 * HANN_BANDWIDTH / q))
    by_bandwidth = max(0, math.ceil(math.log2(cfg.sample_rate / 2 / cutoff)) - 2)
    twos = (cfg.hop_length & -cfg.hop_length).bit_length() - 1
    return CqtPlan(octaves, min(by_bandwidth, max(0, twos - octaves + 1)), top, q, cutoff)


def preset_config(preset: "str | FeatureConfig") -> FeatureConfig:
    """Return the canonical parameters of a preset (a config is returned as it is).

    Raises:
        ValueError: ``preset`` is not a known preset name.
    """
    if isinstance(preset, FeatureConfig):
        return preset
    return FeatureConfig(preset=preset)  # type: ignore[arg-type]


def channel_blocks(preset: str | FeatureConfig = MUSICODER324) -> dict[str, slice]:
    """Channel ranges of each block, in output order (e.g. ``{"chroma": slice(0, 12), ...}``)."""
    cfg = preset_config(preset)
    sizes = {
        "chroma": cfg.n_chroma,
        "mfcc": cfg.n_mfcc,
        "delta": cfg.n_mfcc,
        "mel": cfg.n_mels,
        "cqt": cfg.cqt_bins,
    }
    blocks, start = {}, 0
    for name in PRESET_BLOCKS[cfg.preset]:
        blocks[name] = slice(start, start + sizes[name])
        start += sizes[name]
    return blocks


def num_channels(preset: str | FeatureConfig = MUSICODER324) -> int:
    """Channels per frame: 324 for ``musicoder324``, 128 for ``logmel128``."""
    return list(channel_blocks(preset).values())[-1].stop


def num_frames(num_samples: int, preset: str | FeatureConfig = MUSICODER324) -> int:
    """Frames for ``num_samples`` input samples (centred frames: ``1 + num_samples // hop``)."""
    return 1 + num_samples // preset_config(preset).hop_length
