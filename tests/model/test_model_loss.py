"""Tests for musicoder/model/loss.py: only predicted cells count, empty parts are 0 with grads."""

from __future__ import annotations

import pytest
import torch

from musicoder.model import Batch, reconstruction_loss


def hand_batch() -> Batch:
    features = torch.tensor(
        [[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [100.0, 100.0, 100.0]]]  # frame 2 is padding
    )
    return Batch(
        features=features,
        valid=torch.tensor([[True, True, False]]),
        masked_input=torch.zeros_like(features),
        cfm=torch.tensor([[False, True, True]]),  # frame 2 flagged but padding: must not count
        ccm=torch.tensor([[True, False, False]]),
    )


def test_hand_computed_small_case():
    batch = hand_batch()
    loss = reconstruction_loss(torch.zeros(1, 3, 3), batch)
    # CFM cells: frame 1 x all channels -> |4|, |5|, |6|.
    assert loss.cfm_cells == 3 and loss.cfm.item() == pytest.approx(5.0)
    # CCM cells: valid frames 0, 1 x channel 0 -> |1|, |4|.
    assert loss.ccm_cells == 2 and loss.ccm.item() == pytest.approx(2.5)
    # Union counts (1, 0) once: |1| + |4| + |5| + |6| over 4 cells.
    assert loss.total.item() == pytest.approx(16.0 / 4)


def test_unmasked_cells_do_not_matter():
    batch = hand_batch()
    reconstruction = torch.zeros(1, 3, 3)
    reconstruction[0, 0, 1:] = 1e6  # frame 0, channels outside the CCM band
    reconstruction[0, 2] = -1e6  # padding
    assert reconstruction_loss(reconstruction, batch).total.item() == pytest.approx(4.0)


def test_empty_parts_are_zero_and_keep_gradients():
    batch = hand_batch()
    batch.cfm = torch.zeros(1, 3, dtype=torch.bool)
    batch.ccm = torch.zeros(1, 3, dtype=torch.bool)
    reconstruction = torch.randn(1, 3, 3, requires_grad=True)
    loss = reconstruction_loss(reconstruction, batch)
    assert loss.total.item() == loss.cfm.item() == loss.ccm.item() == 0.0
    assert (loss.cfm_cells, loss.ccm_cells) == (0, 0)
    loss.total.backward()
    assert reconstruction.grad is not None
    assert torch.equal(reconstruction.grad, torch.zeros(1, 3, 3))


def test_unmasked_batch_counts_nothing():
    features = torch.randn(2, 4, 3)
    batch = Batch(features=features, valid=torch.ones(2, 4, dtype=torch.bool))
    loss = reconstruction_loss(torch.zeros_like(features), batch)
    assert loss.total.item() == 0.0 and loss.cfm_cells == loss.ccm_cells == 0


def test_gradient_only_on_predicted_cells_and_low_precision_input():
    batch = hand_batch()
    reconstruction = torch.zeros(1, 3, 3, dtype=torch.bfloat16, requires_grad=True)
    loss = reconstruction_loss(reconstruction, batch)
    assert loss.total.dtype == torch.float32
    loss.total.backward()
    predicted = torch.tensor([[[True, False, False], [True, True, True], [False, False, False]]])
    assert torch.all((reconstruction.grad != 0) == predicted)


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match=r"reconstruction \(1, 3, 2\) does not match"):
        reconstruction_loss(torch.zeros(1, 3, 2), hand_batch())


def test_visible_weight_adds_the_visible_cells_mean():
    batch = hand_batch()
    plain = reconstruction_loss(torch.zeros(1, 3, 3), batch)
    assert plain.visible.item() == 0.0
    weighted = reconstruction_loss(torch.zeros(1, 3, 3), batch, visible_weight=0.5)
    # Visible valid cells: frame 0, channels 1 and 2 -> |2|, |3|; padding never counts.
    assert weighted.visible.item() == pytest.approx(2.5)
    assert weighted.total.item() == pytest.approx(plain.total.item() + 0.5 * 2.5)
    assert (weighted.cfm.item(), weighted.ccm.item()) == (plain.cfm.item(), plain.ccm.item())


def test_negative_visible_weight_is_refused():
    from musicoder.model import LossConfig

    with pytest.raises(ValueError, match="loss.visible_weight"):
        LossConfig(visible_weight=-1.0)
