"""`STD_FLOOR` (musicoder/model/batch.py), the one floor of every standardization: on a corpus
whose top mel bands are nearly constant (audio low-passed at 5 kHz, as low-bitrate MP3s are), it
floors no channel, and an unseen full-band track stays bounded after normalization, also when
the band is exactly constant in the corpus."""

from __future__ import annotations

import numpy as np
import torch
from scipy import signal

from musicoder.data.collate import collate
from musicoder.features import channel_blocks, extract_features
from musicoder.model import STD_FLOOR

SR = 22050


def _clips(seed: int, count: int, low_pass: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(3 * SR) / SR
    clips = []
    for _ in range(count):
        f0 = 110 * 2 ** rng.uniform(0, 3, size=4)
        x = sum(np.sin(2 * np.pi * f * h * t) / h for f in f0 for h in range(1, 6))
        x = x + 0.3 * rng.standard_normal(len(t)) * (rng.uniform(size=len(t)) < 0.2)
        if low_pass:
            x = signal.sosfiltfilt(signal.butter(16, 5000, fs=SR, output="sos"), x)
        clips.append(0.5 * x / np.abs(x).max())
    return np.stack(clips).astype(np.float32)


def _features(clips: np.ndarray, *, edges: bool = True) -> np.ndarray:
    """Frames `(N, C)` as stored (float16); without the clips' first and last frames (where the
    STFT's zero padding makes a broadband click), as in a corpus of long tracks."""
    feats = extract_features(torch.from_numpy(clips), "musicoder324")  # (B, T, C)
    feats = feats if edges else feats[:, 1:-1]
    return feats.reshape(-1, feats.shape[-1]).double().numpy()


def _worst(frames: np.ndarray, mean: np.ndarray, std: np.ndarray, floor: float) -> float:
    """Largest |value| of `frames` after the loader's normalization with `floor`."""
    batch = collate(
        [torch.from_numpy(frames[:300])],
        mean=torch.from_numpy(mean.astype(np.float32)),
        inv_std=torch.from_numpy(1 / np.maximum(std, floor).astype(np.float32)),
    )
    return float(batch.features.abs().max())


def test_std_floor_bounds_normalized_values_of_near_constant_channels():
    low = _clips(0, 6, low_pass=True)
    corpus, unseen = _features(low), _features(_clips(1, 2, low_pass=False))
    top_mel = channel_blocks()["mel"].stop - 1  # 9.9-11 kHz: above the low-pass
    band = corpus[:, top_mel]
    assert (band == band.min()).mean() > 0.9  # constant but for the clips' edge frames
    mean, std = corpus.mean(0), corpus.std(0)
    assert (std > STD_FLOOR).all()  # no measured channel is floored
    assert _worst(unseen, mean, std, STD_FLOOR) < 200
    # Long tracks: no edge frames, the band is exactly constant in the corpus (std 0).
    long = _features(low, edges=False)
    mean, std = long.mean(0), long.std(0)
    assert std[top_mel] == 0.0
    assert _worst(unseen, mean, std, STD_FLOOR) < 200  # at most ~16 / STD_FLOOR
    assert _worst(unseen, mean, std, 1e-5) > 1e5  # the floor this replaced
