"""Tests for musicoder/pretrained.py: export round trip, no pickle, clear errors on mismatch,
and `musicoder.load_encoder(DIR).embed(waveform)` (shapes, determinism, chunking, padding)."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import numpy as np
import pytest
import safetensors.torch
import torch

import musicoder
from musicoder.model import MusiCoder, MusiCoderEncoder, variant_config
from musicoder.model.pooling import chunk_bounds, pad_chunks, pool_layers
from musicoder.pretrained import load_encoder_weights, save_encoder


EXTRA = {
    "preset": "logmel128",
    "feature": {"preset": "logmel128"},
    "stats": {"mean": [0.0] * 128, "std": [1.0] * 128},
}


@pytest.fixture
def exported(tmp_path):
    torch.manual_seed(0)
    model = MusiCoder(variant_config("tiny", input_dim=128)).eval()
    save_encoder(model, str(tmp_path), extra=EXTRA)
    return model, tmp_path


def test_round_trip_gives_identical_outputs(exported):
    model, out_dir = exported
    x, valid = torch.randn(2, 20, 128), torch.ones(2, 20, dtype=torch.bool)
    valid[1, 15:] = False
    with torch.no_grad():
        want = model.encoder(x, valid, output_hidden_states=True)
        for source in (str(out_dir), str(out_dir / "encoder.safetensors")):
            encoder, config = load_encoder_weights(source)
            assert isinstance(encoder, MusiCoderEncoder) and not encoder.training
            got = encoder(x, valid, output_hidden_states=True)
            assert torch.equal(got.last_hidden, want.last_hidden)
            for a, b in zip(got.hidden_states, want.hidden_states, strict=True):
                assert torch.equal(a, b)
    assert config["format"] == "musicoder-encoder" and config["format_version"] == 1
    assert config["model"] == model.config.to_dict()
    assert config["stats"] == EXTRA["stats"] and config["preset"] == "logmel128"


def test_export_holds_only_encoder_tensors(exported):
    model, out_dir = exported
    tensors = safetensors.torch.load_file(str(out_dir / "encoder.safetensors"))
    assert set(tensors) == set(model.encoder.state_dict())
    assert not any(name.startswith("head") for name in tensors)
    assert sorted(p.name for p in out_dir.iterdir()) == ["config.json", "encoder.safetensors"]


def test_shape_mismatch_is_rejected_with_file_and_tensor(exported):
    _, out_dir = exported
    config = json.loads((out_dir / "config.json").read_text())
    config["model"]["ffn"] = 256
    (out_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError) as info:
        load_encoder_weights(str(out_dir))
    message = str(info.value)
    assert "\n" not in message
    assert "encoder.safetensors" in message and "layers.0.ffn.0.weight" in message
    assert "(512, 128)" in message and "(256, 128)" in message


def test_missing_or_extra_tensor_is_rejected(exported):
    _, out_dir = exported
    path = out_dir / "encoder.safetensors"
    tensors = safetensors.torch.load_file(str(path))
    removed = tensors.pop("final_norm.weight")
    safetensors.torch.save_file(tensors, str(path))
    with pytest.raises(ValueError, match=r"safetensors: missing tensor 'final_norm.weight'"):
        load_encoder_weights(str(out_dir))
    tensors.update({"final_norm.weight": removed, "surprise": torch.zeros(1)})
    safetensors.torch.save_file(tensors, str(path))
    with pytest.raises(ValueError, match=r"encoder.safetensors: unexpected tensor 'surprise'"):
        load_encoder_weights(str(out_dir))


def test_bad_files_give_clear_errors(tmp_path, exported):
    _, out_dir = exported
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_encoder_weights(str(tmp_path / "nowhere"))
    (out_dir / "encoder.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="encoder.safetensors: not a readable safetensors file"):
        load_encoder_weights(str(out_dir))
    (out_dir / "config.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="config.json: not a MusiCoder encoder export"):
        load_encoder_weights(str(out_dir))


def test_save_rejects_reserved_extra_keys_and_other_modules(tmp_path):
    encoder = MusiCoderEncoder(variant_config("tiny"))
    with pytest.raises(ValueError, match=r"reserved key\(s\) \['model'\]"):
        save_encoder(encoder, str(tmp_path), extra={"model": {}})
    with pytest.raises(TypeError, match="got Linear"):
        save_encoder(torch.nn.Linear(2, 2), str(tmp_path), extra={})


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
