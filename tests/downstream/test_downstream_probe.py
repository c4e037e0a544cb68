"""Tests for musicoder/downstream/probe.py's head: linear and MARBLE-style MLP, learned layer
weights or one chosen layer, standardization; and the effective rank used beside it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from musicoder.downstream.config import TrainConfig
from musicoder.downstream.metrics import effective_rank
from musicoder.downstream.probe import ChunkSet, ProbeHead, predict_probe, train_probe


def layered_task(seed: int) -> tuple[ChunkSet, ChunkSet]:
    """Two classes readable only from state 2 of 3; states 0 and 1 are noise."""
    g = torch.Generator().manual_seed(seed)

    def split(n: int) -> ChunkSet:
        labels = torch.arange(n) % 2
        inputs = torch.randn(n, 3, 6, generator=g)
        inputs[:, 2, 0] += 3.0 * (2 * labels - 1)
        return ChunkSet(inputs, torch.arange(n), labels)

    return split(80), split(40)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("hidden", [None, 32])
def test_learned_layer_weights_find_the_informative_state(seed, hidden):
    train, valid = layered_task(seed)
    torch.manual_seed(seed)
    head = ProbeHead(3, 6, 2, hidden=hidden, dropout=0.2).fit_standardization(train.inputs)
    train_probe(head, train, valid, "genre", TrainConfig(lr=1e-2, max_epochs=60, patience=60))
    weights = head.layer_weights()
    assert sum(weights) == pytest.approx(1) and int(np.argmax(weights)) == 2
    probs = predict_probe(head, valid, "genre")
    assert (probs.argmax(1) == valid.targets.numpy()).mean() > 0.9


def test_chosen_layer_uses_that_state_only():
    train, valid = layered_task(0)
    scores = {}
    for layer in (0, 2, -1):
        torch.manual_seed(0)
        head = ProbeHead(3, 6, 2, layer=layer).fit_standardization(train.inputs)
        train_probe(head, train, valid, "genre", TrainConfig(lr=1e-2, max_epochs=40, patience=40))
        expected = [1.0, 0.0, 0.0] if layer == 0 else [0.0, 0.0, 1.0]
        assert head.layer_weights() == expected
        probs = predict_probe(head, valid, "genre")
        scores[layer] = (probs.argmax(1) == valid.targets.numpy()).mean()
    assert scores[2] == scores[-1] > 0.9 > scores[0]


def test_layer_out_of_range_is_one_line_error():
    with pytest.raises(ValueError, match="train.layer: 3 is outside the 3 pooled states"):
        ProbeHead(3, 6, 2, layer=3)


def test_effective_rank_counts_used_directions():
    rng = np.random.default_rng(0)
    isotropic = rng.standard_normal((4000, 8))
    assert effective_rank(isotropic) == pytest.approx(8, rel=0.05)
    on_a_line = rng.standard_normal((500, 1)) * rng.standard_normal((1, 8))
    assert effective_rank(on_a_line) == pytest.approx(1, abs=1e-6)
    assert effective_rank(np.ones((10, 4))) == 0.0
