"""`musicoder.load_encoder(DIR).embed(waveform)`: shapes, determinism, chunking and padding."""

from __future__ import annotations

import itertools
import subprocess
import sys

import numpy as np
import pytest
import torch

import musicoder
from musicoder.encoder_api import chunk_bounds, pad_chunks, pool_layers


@pytest.mark.parametrize(
    "frames,window", [(1, 1), (7, 3), (100, 48), (96, 48), (97, 48), (5000, 2048)]
)
def test_chunk_bounds_cover_evenly(frames, window):
    bounds = chunk_bounds(frames, window)
    assert bounds[0][0] == 0 and bounds[-1][1] == frames
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))  # contiguous, no overlap
    sizes = [e - s for s, e in bounds]
    assert max(sizes) <= window and max(sizes) - min(sizes) <= 1
    assert len(bounds) == -(-frames // window)  # the fewest chunks that fit


def test_embed_shape_determinism_and_safetensors_path(tiny_export):
    encoder = musicoder.load_encoder(str(tiny_export), device="cpu")
    wave = torch.from_numpy(np.random.default_rng(0).standard_normal(22050 * 3).astype("float32"))
    first = encoder.embed(0.1 * wave)
    assert first.shape == (2 * encoder.hidden,) and first.dtype == torch.float32  # mean, std
    assert encoder.pooled_dim() == 2 * encoder.hidden and encoder.pooled_dim("mean") == 128
    assert torch.isfinite(first).all()
    torch.testing.assert_close(encoder.embed(0.1 * wave), first, rtol=0, atol=0)
    by_file = musicoder.load_encoder(str(tiny_export / "encoder.safetensors"), device="cpu")
    torch.testing.assert_close(by_file.embed((0.1 * wave).numpy()), first)
    assert isinstance(encoder.model, torch.nn.Module)
    mean = encoder.embed(0.1 * wave, layer=0, pooling="mean")
    assert mean.shape == (encoder.hidden,)
    torch.testing.assert_close(encoder.embed(0.1 * wave, layer=0)[: encoder.hidden], mean)
    with pytest.raises(ValueError, match="pooling: must be one of meanstd, mean, got 'max'"):
        encoder.embed(0.1 * wave, pooling="max")


def test_long_waveform_is_chunked_and_frame_weighted(tiny_export):
    encoder = musicoder.load_encoder(str(tiny_export), device="cpu")
    features = encoder.features(0.1 * torch.randn(22050 * 7))  # 151 frames, window 48 -> 4 chunks
    window = encoder.window()
    assert window == 48 and len(chunk_bounds(len(features), window)) == 4
    manual = []
    for start, end in chunk_bounds(len(features), window):
        x = encoder.normalize(features[start:end])[None]
        hidden = encoder.model(x, torch.ones(1, end - start, dtype=torch.bool)).last_hidden
        manual.append(hidden[0])  # (frames, H)
    frames = torch.cat(manual)  # every frame weighs the same, whichever chunk it is in
    expected = torch.cat([frames.mean(0), frames.std(0, correction=0)])
    torch.testing.assert_close(encoder.embed_features(features), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        encoder.embed_features(features, pooling="mean"), frames.mean(0), rtol=1e-5, atol=1e-5
    )


def test_padding_does_not_change_pooled_states(tiny_export):
    encoder = musicoder.load_encoder(str(tiny_export), device="cpu")
    chunks = [torch.randn(30, 324), torch.randn(48, 324), torch.randn(5, 324)]
    with torch.no_grad():
        batched = pool_layers(encoder.model, *pad_chunks(chunks))
        for i, chunk in enumerate(chunks):
            alone = pool_layers(encoder.model, *pad_chunks([chunk]))
            torch.testing.assert_close(batched[i], alone[0], rtol=1e-4, atol=1e-5)
    assert batched.shape == (3, encoder.num_states, 2 * encoder.hidden)
    assert (batched[..., encoder.hidden :] > 0).all()  # a std over frames of real states


def test_embed_resamples_and_rejects_bad_input(tiny_export):
    encoder = musicoder.load_encoder(str(tiny_export), device="cpu")
    t = torch.arange(44100 * 3) / 44100
    tone = 0.3 * torch.sin(2 * torch.pi * 440 * t)
    at_44k = encoder.embed(tone, sample_rate=44100)
    at_22k = encoder.embed(tone[::2].contiguous())  # 440 Hz is far below both Nyquists
    assert torch.nn.functional.cosine_similarity(at_44k, at_22k, dim=0) > 0.99
    with pytest.raises(ValueError, match="mono waveform"):
        encoder.embed(torch.zeros(2, 22050))
    with pytest.raises(FileNotFoundError):
        musicoder.load_encoder(str(tiny_export / "missing"))


def test_import_musicoder_stays_light():
    code = (
        "import sys, musicoder; assert 'torch' not in sys.modules, 'torch imported';"
        "import musicoder.downstream; assert 'torch' not in sys.modules, 'downstream';"
        "assert callable(musicoder.load_encoder) and 'torch' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_meanstd_pooling_of_a_one_frame_chunk_has_finite_gradients(tiny_export):
    """A one-frame chunk has variance 0; fine-tuning backpropagates through its std."""
    encoder = musicoder.load_encoder(str(tiny_export), device="cpu")
    model = encoder.model.train()
    pooled = pool_layers(model, *pad_chunks([torch.randn(1, 324), torch.randn(6, 324)]))
    assert torch.isfinite(pooled).all() and (pooled[0, :, encoder.hidden :] < 1e-5).all()
    pooled.sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
