"""Tests for musicoder/model/contrastive.py and the contrastive part of the pre-training loss."""

from __future__ import annotations

import math

import pytest
import torch

from musicoder.model import (
    Batch,
    LossConfig,
    MusiCoder,
    MusiCoderConfig,
    pretraining_loss,
    reconstruction_loss,
    split_halves,
)
from musicoder.model.contrastive import contrastive_loss, pair_accuracy, pool_valid


def masked_batch(b: int = 3, t: int = 8, c: int = 5, seed: int = 0) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    return Batch(
        features=torch.randn(b, t, c, generator=gen),
        valid=torch.rand(b, t, generator=gen) > 0.2,
        cfm=torch.rand(b, t, generator=gen) > 0.5,
        ccm=torch.rand(b, c, generator=gen) > 0.5,
    )


def test_split_halves_puts_crop_k_in_rows_2k_and_2k_plus_1():
    batch = masked_batch()
    inputs = batch.features * 10
    halves = split_halves(batch, inputs)
    assert halves.features.shape == (6, 4, 5)
    for k in range(3):
        for half in range(2):
            row, frames = 2 * k + half, slice(4 * half, 4 * half + 4)
            assert torch.equal(halves.features[row], batch.features[k, frames])
            assert torch.equal(halves.masked_input[row], inputs[k, frames])
            assert torch.equal(halves.valid[row], batch.valid[k, frames])
            assert torch.equal(halves.cfm[row], batch.cfm[k, frames])
            assert torch.equal(halves.ccm[row], batch.ccm[k])
    with pytest.raises(ValueError, match="even"):
        split_halves(masked_batch(t=7), torch.zeros(3, 7, 5))


def test_pool_valid_averages_only_valid_frames():
    hidden = torch.tensor([[[1.0], [3.0], [100.0]], [[5.0], [7.0], [9.0]]])
    valid = torch.tensor([[True, True, False], [False, False, False]])
    assert pool_valid(hidden, valid).flatten().tolist() == [2.0, 0.0]


def test_contrastive_loss_rewards_matching_partners():
    gen = torch.Generator().manual_seed(1)
    crops = torch.randn(8, 16, generator=gen)
    paired = crops.repeat_interleave(2, dim=0)  # partners identical, crops near-orthogonal
    valid = torch.ones(16, 4, dtype=torch.bool)
    good = contrastive_loss(paired, valid, temperature=0.1)
    shuffled = contrastive_loss(paired[torch.randperm(16, generator=gen)], valid, temperature=0.1)
    assert good.item() < 0.05 < shuffled.item()
    assert pair_accuracy(paired).item() == 1.0
    # All views alike: the partner is one of 15 equally likely others.
    same = contrastive_loss(torch.ones(16, 4), valid, temperature=0.1)
    assert same.item() == pytest.approx(math.log(15), rel=1e-5)


def test_contrastive_loss_leaves_out_pairs_with_an_empty_view():
    gen = torch.Generator().manual_seed(2)
    z = torch.randn(6, 8, generator=gen, requires_grad=True)
    valid = torch.ones(6, 4, dtype=torch.bool)
    valid[5] = False  # crop 2's second half is all padding
    full = contrastive_loss(z, valid, temperature=0.5)
    logits = torch.nn.functional.normalize(z, dim=-1) @ torch.nn.functional.normalize(z, dim=-1).T
    logits = (logits / 0.5).masked_fill(torch.eye(6, dtype=torch.bool), float("-inf"))
    per_view = torch.nn.functional.cross_entropy(
        logits, torch.tensor([1, 0, 3, 2, 5, 4]), reduction="none"
    )
    assert full.item() == pytest.approx(per_view[:4].mean().item(), rel=1e-6)
    full.backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
    none = contrastive_loss(z, torch.zeros(6, 4, dtype=torch.bool), temperature=0.5)
    assert none.item() == 0.0 and none.requires_grad


def test_pretraining_loss_adds_the_weighted_term_and_needs_a_projection_head():
    config = MusiCoderConfig(input_dim=5, num_layers=1, hidden=8, heads=2, ffn=16, max_frames=8)
    batch = split_halves(masked_batch(), masked_batch().features)
    model = MusiCoder(config, projection_dim=4)
    out = model(batch.masked_input, batch.valid)
    assert out.projection.shape == (6, 4)
    plain = reconstruction_loss(out.reconstruction, batch)
    both = pretraining_loss(out, batch, LossConfig(contrastive_weight=0.5))
    assert both.total.item() == pytest.approx(plain.total.item() + 0.5 * both.contrastive.item())
    off = pretraining_loss(out, batch, LossConfig())
    assert off.contrastive is None and off.total.item() == pytest.approx(plain.total.item())
    without_head = MusiCoder(config)(batch.masked_input, batch.valid)
    assert without_head.projection is None
    with pytest.raises(ValueError, match="projection head"):
        pretraining_loss(without_head, batch, LossConfig(contrastive_weight=0.5))


@pytest.mark.parametrize(
    "knobs, message",
    [
        ({"contrastive_weight": -1.0}, "contrastive_weight"),
        ({"contrastive_temperature": 0.0}, "contrastive_temperature"),
        ({"contrastive_dim": 0}, "contrastive_dim"),
    ],
)
def test_loss_config_refuses_bad_contrastive_knobs(knobs, message):
    with pytest.raises(ValueError, match=message):
        LossConfig(**knobs)
