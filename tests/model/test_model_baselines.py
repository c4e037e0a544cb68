"""Tests for musicoder/model/baselines.py: what each trivial predictor recovers, and that it
only reads the cells the model sees."""

from __future__ import annotations

import pytest
import torch

from musicoder.model import Batch, MaskingConfig, draw_masks
from musicoder.model.baselines import baseline_losses, predict


def masked(features: torch.Tensor, cfm: list[int], band: tuple[int, int]) -> Batch:
    b, t, c = features.shape
    cfm_mask = torch.zeros(b, t, dtype=torch.bool)
    cfm_mask[:, cfm] = True
    ccm = torch.zeros(b, c, dtype=torch.bool)
    ccm[:, band[0] : band[1]] = True
    return Batch(features=features, valid=torch.ones(b, t, dtype=torch.bool), cfm=cfm_mask, ccm=ccm)


def planar(t: int = 12, c: int = 8) -> torch.Tensor:
    """x[t, c] = 0.5 t - 0.25 c + 1: linear in time and in channels."""
    time = torch.arange(t, dtype=torch.float32)[:, None]
    chan = torch.arange(c, dtype=torch.float32)[None, :]
    return (0.5 * time - 0.25 * chan + 1.0)[None]


def test_interpolation_recovers_a_plane_exactly_and_clip_mean_does_not():
    batch = masked(planar(), cfm=[3, 4, 5, 9], band=(2, 5))
    losses = baseline_losses(batch)
    assert losses["interpolate"].cfm.item() == pytest.approx(0.0, abs=1e-6)
    assert losses["interpolate"].ccm.item() == pytest.approx(0.0, abs=1e-6)
    assert losses["clip_mean"].cfm.item() > 0.5


def test_edges_copy_the_nearest_visible_frame():
    batch = masked(planar(), cfm=[0, 1, 11], band=(0, 0))
    pred = predict(batch, "interpolate")
    torch.testing.assert_close(pred[0, 0], batch.features[0, 2])
    torch.testing.assert_close(pred[0, 11], batch.features[0, 10])


@pytest.mark.parametrize("name", ["interpolate", "clip_mean"])
def test_hidden_cells_and_padding_are_never_read(name):
    torch.manual_seed(0)
    x = torch.randn(3, 40, 20)
    valid = torch.ones(3, 40, dtype=torch.bool)
    valid[1, 30:] = False
    batch = draw_masks(
        Batch(features=x, valid=valid),
        MaskingConfig(cfm_fraction=0.3, ccm_lo=0, ccm_hi=20),
        torch.Generator().manual_seed(1),
    )
    hidden = (batch.cfm | ~batch.valid)[:, :, None] | batch.ccm[:, None, :]  # (B, T, C)
    scrambled = Batch(
        features=torch.where(hidden, torch.randn_like(x) * 100, x),
        valid=batch.valid,
        cfm=batch.cfm,
        ccm=batch.ccm,
    )
    torch.testing.assert_close(predict(batch, name), predict(scrambled, name))


def test_unknown_baseline_is_one_line_error():
    with pytest.raises(ValueError, match="baseline: must be one of"):
        predict(masked(planar(), cfm=[1], band=(0, 1)), "oracle")
