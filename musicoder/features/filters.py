"""Filterbanks and kernels behind `musicoder.features.extract`, built once per config
(numpy/torch, no state): librosa's chroma filterbank, the top-octave kernels of its CQT (on the
octave layout of `musicoder.features.config.cqt_plan`), and the Kaiser half-band low-pass that
decimates between CQT octaves.

Each function reads only the fields it needs from a `FeatureConfig`.
"""

from __future__ import annotations

import numpy as np
import torch

from musicoder.features.config import CqtPlan, FeatureConfig

A4_HZ = 440.0
DECIMATE_HALF_TAPS = 12  # 25-tap half-band: flat (-0.01 dB) to 0.3, <= -85 dB above 0.78 x Nyquist
DECIMATE_BLOCK = 32  # output samples per row of the decimation matrix product
KAISER_BETA = 8.0


def chroma_filterbank(cfg: FeatureConfig) -> np.ndarray:
    """``librosa.filters.chroma`` (tuning 0, ctroct 5, octwidth 2, L2, base C): (chroma, freqs)."""
    n, n_fft = cfg.n_chroma, cfg.n_fft
    hz = np.linspace(0, cfg.sample_rate, n_fft, endpoint=False)[1:]
    bins = n * np.log2(hz / (A4_HZ / 16))
    bins = np.concatenate(([bins[0] - 1.5 * n], bins))  # DC: 1.5 octaves below the first bin
    width = np.concatenate((np.maximum(np.diff(bins), 1.0), [1.0]))
    half = np.round(n / 2)
    dist = np.remainder(bins[None, :] - np.arange(n)[:, None] + half + 10 * n, n) - half
    weights = np.exp(-0.5 * (2 * dist / width) ** 2)
    weights /= np.linalg.norm(weights, axis=0, keepdims=True)
    weights *= np.exp(-0.5 * ((bins / n - 5.0) / 2.0) ** 2)  # favour octaves around C5
    return np.roll(weights, -3 * (n // 12), axis=0)[:, : n_fft // 2 + 1]


def cqt_kernels(cfg: FeatureConfig, plan: CqtPlan) -> tuple[np.ndarray, np.ndarray]:
    """Top-octave kernels ``(W, 2 * bpo)`` (real parts, then imaginary; centre at ``W // 2``)
    at the top octave's rate, and per-bin scales ``(cqt_bins,)``. A kernel is a Hann-windowed
    complex exponential over its window sum (librosa's L1 norm); the scale, sqrt(filter length
    at the input rate), reproduces ``librosa.cqt(scale=True)``."""
    rate = cfg.sample_rate / 2**plan.early
    lengths = plan.q * rate / plan.freqs
    width = 2 * (int(np.ceil(lengths.max())) // 2 + 1)
    kernel = np.zeros((width, 2 * len(lengths)))
    for i, (length, freq) in enumerate(zip(lengths, plan.freqs, strict=True)):
        t = np.arange(-length // 2, length // 2)  # librosa's sample positions, 0 = frame centre
        window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(len(t)) / len(t))  # periodic Hann
        phase = 2 * np.pi * freq / rate * t
        rows = t.astype(int) + width // 2
        kernel[rows, i] = window * np.cos(phase) / window.sum()
        kernel[rows, i + len(lengths)] = -window * np.sin(phase) / window.sum()
    octave = np.arange(plan.octaves)[::-1].repeat(len(lengths))  # 0 = top octave
    full_rate = np.tile(lengths, plan.octaves) * 2.0 ** (plan.early + octave)
    return kernel, np.sqrt(full_rate[-cfg.cqt_bins :])


def halfband() -> tuple[float, torch.Tensor]:
    """Kaiser half-band low-pass for decimation by 2: its centre tap and odd-tap band matrix.

    Its even taps are zero but the centre, so ``y[n] = centre * x[2n] + (odd taps applied to
    x_odd = x[1::2])``. Row ``m`` of frames ``x_odd[b*m - M/2 : b*m + b + M/2 - 1]`` times the
    ``(b + M - 1, b)`` band matrix gives that part of outputs ``b*m .. b*m + b - 1``.
    """
    half, block = DECIMATE_HALF_TAPS, DECIMATE_BLOCK
    d = torch.arange(-half, half + 1, dtype=torch.float64)
    taps = torch.sinc(d / 2) * torch.kaiser_window(
        2 * half + 1, periodic=False, beta=KAISER_BETA, dtype=torch.float64
    )
    taps /= taps.sum()  # unity gain at DC
    odd = taps[1::2]  # d = -M+1, -M+3, ..., M-1: x[2n - d] = x_odd[n - (d + 1) / 2]
    matrix = torch.zeros(block + half - 1, block, dtype=torch.float64)
    for j in range(block):
        matrix[j : j + half, j] = odd.flip(0)
    return float(taps[half]), matrix
