"""Downstream test data: a random-init tiny encoder export and small labelled audio sets.

`write_export` saves an encoder in the export format (`encoder.safetensors` + `config.json`)
without any training; `write_clip` writes a short tone-plus-noise wav whose pitch a probe can
learn. The session fixture `tiny_export` is shared by the encoder-API, embed and run tests.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import pytest
import soundfile as sf
import torch

from musicoder.features import num_channels, preset_config
from musicoder.model import MusiCoderConfig, MusiCoderEncoder
from musicoder.pretrained import save_encoder

PRESET = "musicoder324"
TINY = MusiCoderConfig(max_frames=48, dropout=0.0)  # small window: 4 s of audio = 2 chunks


def write_export(
    out_dir: pathlib.Path,
    *,
    config: MusiCoderConfig = TINY,
    seed: int = 0,
    mean: np.ndarray | None = None,
    std: np.ndarray | None = None,
    model: torch.nn.Module | None = None,
) -> pathlib.Path:
    """Save `model` (default: a seeded random-init encoder) with preset, feature config, stats."""
    if model is None:
        torch.manual_seed(seed)
        model = MusiCoderEncoder(config)
    channels = num_channels(PRESET)
    stats = {
        "mean": (np.zeros(channels) if mean is None else mean).tolist(),
        "std": (np.ones(channels) if std is None else std).tolist(),
    }
    save_encoder(
        model,
        str(out_dir),
        extra={
            "preset": PRESET,
            "feature": dataclasses.asdict(preset_config(PRESET)),
            "stats": stats,
        },
    )
    return out_dir


def write_clip(
    path: pathlib.Path, *, hz: float, seconds: float = 2.5, seed: int = 0, sr: int = 22050
) -> pathlib.Path:
    """A tone at `hz` with light noise (peak ~0.35): distinct pitches make learnable classes."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * sr)) / sr
    x = 0.3 * np.sin(2 * np.pi * hz * (1 + 0.02 * rng.standard_normal()) * t)
    x += 0.03 * rng.standard_normal(len(t))
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x.astype(np.float32), sr)
    return path


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory) -> pathlib.Path:
    """A random-init tiny encoder export (window 48 frames), with mean 0 / std 1 stats."""
    return write_export(tmp_path_factory.mktemp("tiny_export"))
