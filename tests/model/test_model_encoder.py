"""Tests for musicoder/model/encoder.py and heads.py: shapes, padding, checkpointing, training."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from musicoder.model import (
    draw_masks,
    model_input,
    Batch,
    MaskingConfig,
    MusiCoder,
    reconstruction_loss,
    variant_config,
)


def tiny(**overrides) -> MusiCoder:
    torch.manual_seed(0)
    return MusiCoder(variant_config("tiny", **overrides))


def masked_batch(lengths: list[int], t: int, c: int = 324, seed: int = 0) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(len(lengths), t, c, generator=gen)
    valid = torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]
    drawn = draw_masks(Batch(features, valid), MaskingConfig(), gen)
    return dataclasses.replace(drawn, masked_input=model_input(drawn))


def test_output_shapes_and_hidden_states():
    model = tiny().eval()
    batch = masked_batch([20, 12], t=20)
    out = model(batch.masked_input, batch.valid, output_hidden_states=True)
    assert out.reconstruction.shape == (2, 20, 324)
    assert out.last_hidden.shape == (2, 20, 128)
    assert len(out.hidden_states) == model.config.num_layers + 1
    assert all(h.shape == (2, 20, 128) for h in out.hidden_states)
    assert out.hidden_states[-1] is out.last_hidden
    assert model(batch.masked_input, batch.valid).hidden_states is None


def test_position_scale_scales_the_sinusoids_and_zero_makes_frames_order_free():
    scaled, plain = tiny(position_scale=0.25).encoder, tiny().encoder
    torch.testing.assert_close(scaled.positions, 0.25 * plain.positions)
    free = tiny(position_scale=0.0).encoder.eval()
    x, valid = torch.randn(1, 12, 324), torch.ones(1, 12, dtype=torch.bool)
    order = torch.randperm(12)
    out = free(x, valid).last_hidden
    torch.testing.assert_close(free(x[:, order], valid).last_hidden, out[:, order])
    shuffled = plain.eval()(x[:, order], valid).last_hidden
    assert not torch.allclose(shuffled, plain(x, valid).last_hidden[:, order])


def test_padding_does_not_change_valid_outputs():
    model = tiny().eval()
    batch = masked_batch([16, 10], t=16)
    noisy = batch.masked_input.clone()
    noisy[1, 10:] = 1e3  # garbage in the padding
    with torch.no_grad():
        clean_out = model(batch.masked_input, batch.valid).reconstruction
        noisy_out = model(noisy, batch.valid).reconstruction
        alone = model(batch.masked_input[1:, :10], batch.valid[1:, :10]).reconstruction
    torch.testing.assert_close(clean_out[1, :10], noisy_out[1, :10])
    torch.testing.assert_close(clean_out[1, :10], alone[0], atol=1e-5, rtol=1e-5)


def test_fully_padded_clip_gives_finite_outputs_and_grads():
    model = tiny()
    batch = masked_batch([8, 0], t=8)
    out = model(batch.masked_input, batch.valid)
    assert torch.isfinite(out.reconstruction).all()
    reconstruction_loss(out.reconstruction, batch).total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_gradients_reach_every_parameter():
    model = tiny()
    batch = masked_batch([24, 17], t=24)
    out = model(batch.masked_input, batch.valid)
    reconstruction_loss(out.reconstruction, batch).total.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_activation_checkpointing_gives_identical_gradients():
    batch = masked_batch([24, 17], t=24)
    grads = []
    for flag in (False, True):
        model = tiny(dropout=0.1, activation_checkpointing=flag).train()
        torch.manual_seed(1)  # same dropout masks; checkpoint replays the RNG state
        out = model(batch.masked_input, batch.valid)
        reconstruction_loss(out.reconstruction, batch).total.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for plain, ckpt in zip(*grads, strict=True):
        torch.testing.assert_close(plain, ckpt)


def test_rejects_wrong_width_and_too_long_input():
    model = tiny(max_frames=16).eval()
    with pytest.raises(ValueError, match="expected 324 channels, got 10"):
        model(torch.zeros(1, 4, 10), torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="17 frames exceed model.max_frames=16"):
        model(torch.zeros(1, 17, 324), torch.ones(1, 17, dtype=torch.bool))


def test_tiny_model_overfits_one_fixed_batch():
    model = tiny(dropout=0.0)
    batch = masked_batch([32, 24], t=32, seed=1)  # fixed masks
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(200):
        loss = reconstruction_loss(model(batch.masked_input, batch.valid).reconstruction, batch)
        optimizer.zero_grad()
        loss.total.backward()
        optimizer.step()
        losses.append(loss.total.item())
    assert losses[-1] * 10 <= losses[0], (losses[0], losses[-1])


def test_batch_to_keeps_masks_bool_and_validates_shapes():
    batch = masked_batch([4], t=4)
    moved = batch.to("cpu", torch.bfloat16)
    assert moved.features.dtype == torch.bfloat16 and moved.masked_input.dtype == torch.bfloat16
    assert moved.valid.dtype == moved.cfm.dtype == moved.ccm.dtype == torch.bool
    assert batch.features.dtype == torch.float32
    with pytest.raises(ValueError, match=r"Batch.valid: expected shape \(1, 4\)"):
        Batch(features=torch.zeros(1, 4, 3), valid=torch.ones(1, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="Batch.cfm: expected dtype torch.bool"):
        Batch(torch.zeros(1, 4, 3), torch.ones(1, 4, dtype=torch.bool), cfm=torch.zeros(1, 4))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_masking_and_bf16_attention_kernels():
    model = tiny().cuda().eval()
    features = torch.randn(4, 64, 324, device="cuda")
    valid = torch.ones(4, 64, dtype=torch.bool, device="cuda")
    valid[1, 40:] = False
    valid[3] = False  # a clip without frames must not produce NaN in the fused kernels
    batch = draw_masks(
        Batch(features, valid), MaskingConfig(), torch.Generator("cuda").manual_seed(0)
    )
    batch = dataclasses.replace(batch, masked_input=model_input(batch))
    assert not (batch.cfm & ~valid).any()
    with torch.no_grad():
        reference = model(batch.masked_input, valid).reconstruction
        with torch.autocast("cuda", dtype=torch.bfloat16):
            low = model(batch.masked_input, valid).reconstruction
    assert torch.isfinite(low).all()
    torch.testing.assert_close(low.float()[valid], reference[valid], atol=0.1, rtol=0.1)
