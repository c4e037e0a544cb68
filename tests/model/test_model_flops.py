"""Tests for musicoder/model/flops.py against torch.utils.flop_counter (math SDPA backend)."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from musicoder.model import (
    draw_masks,
    model_input,
    Batch,
    MaskingConfig,
    MusiCoder,
    flops_per_frame,
    reconstruction_loss,
    variant_config,
)


def measured_flops_per_frame(model: MusiCoder, batch_size: int, seq_len: int, pad: bool) -> float:
    features = torch.randn(batch_size, seq_len, model.config.input_dim)
    valid = torch.ones(batch_size, seq_len, dtype=torch.bool)
    if pad:
        valid[0, seq_len // 2 :] = False  # exercises the masked attention path too
    batch = draw_masks(Batch(features, valid), MaskingConfig(), torch.Generator().manual_seed(0))
    # The counter has no formula for fused CPU attention, so force the math backend (plain bmm).
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        out = model(model_input(batch), batch.valid)
        reconstruction_loss(out.reconstruction, batch).total.backward()
    return counter.get_total_flops() / (batch_size * seq_len)


@pytest.mark.parametrize(("seq_len", "pad"), [(64, False), (512, True)])
def test_flops_per_frame_matches_flop_counter(seq_len, pad):
    config = variant_config("tiny", dropout=0.0, num_layers=2, hidden=192, heads=3, ffn=768)
    model = MusiCoder(config)
    measured = measured_flops_per_frame(model, batch_size=2, seq_len=seq_len, pad=pad)
    predicted = flops_per_frame(config, seq_len)
    assert abs(predicted / measured - 1) < 0.10, (predicted, measured)


def test_attention_term_grows_with_sequence_length():
    config = variant_config("base")
    grow = flops_per_frame(config, 1024) - flops_per_frame(config, 512)
    assert grow == pytest.approx(3 * config.num_layers * 4 * 512 * config.hidden)
