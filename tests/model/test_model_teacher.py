"""Tests for musicoder/model/teacher.py and the teacher part of the pre-training loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from musicoder.model import Batch, LossConfig, MusiCoder, MusiCoderConfig, pretraining_loss
from musicoder.model import reconstruction_loss
from musicoder.model.loss import teacher_frames
from musicoder.model.teacher import ema_update, make_teacher, teacher_loss, teacher_targets

CONFIG = MusiCoderConfig(input_dim=5, num_layers=2, hidden=8, heads=2, ffn=16, max_frames=8)


def masked_batch(b: int = 3, t: int = 8, c: int = 5, seed: int = 0) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(b, t, c, generator=gen)
    valid = torch.ones(b, t, dtype=torch.bool)
    valid[0, 6:] = False
    cfm = torch.rand(b, t, generator=gen) > 0.5
    return Batch(
        features=features,
        valid=valid,
        masked_input=features.masked_fill(cfm[:, :, None], 0.0),
        cfm=cfm,
        ccm=None,
    )


def test_make_teacher_is_a_frozen_fp32_copy_in_eval_mode():
    torch.manual_seed(0)
    model = MusiCoder(CONFIG)
    teacher = make_teacher(model.encoder)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert all(p.dtype == torch.float32 for p in teacher.parameters())
    before = model.encoder.input_proj.weight.detach().clone()
    with torch.no_grad():
        teacher.input_proj.weight.add_(1.0)
    torch.testing.assert_close(model.encoder.input_proj.weight, before)  # not shared


def test_ema_update_moves_the_teacher_by_one_minus_decay():
    torch.manual_seed(0)
    student = MusiCoder(CONFIG).encoder
    teacher = make_teacher(student)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    old = [p.clone() for p in teacher.parameters()]
    ema_update(teacher, student, decay=0.75)
    for t, o, s in zip(teacher.parameters(), old, student.parameters(), strict=True):
        torch.testing.assert_close(t, 0.75 * o + 0.25 * s)
    ema_update(teacher, student, decay=0.0)
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        torch.testing.assert_close(t, s)


def test_teacher_targets_average_normalized_layer_outputs_and_ignore_padding():
    torch.manual_seed(0)
    teacher = make_teacher(MusiCoder(CONFIG).encoder)
    batch = masked_batch()
    states = teacher(batch.features, batch.valid, output_hidden_states=True).hidden_states
    norm = [F.layer_norm(s, (CONFIG.hidden,)) for s in states[1:]]
    every = teacher_targets(teacher, batch.features, batch.valid, layers=0)
    torch.testing.assert_close(every, (norm[0] + norm[1]) / 2)
    last = teacher_targets(teacher, batch.features, batch.valid, layers=1)
    torch.testing.assert_close(last, norm[1])
    assert every.shape == (3, 8, CONFIG.hidden) and not every.requires_grad
    moved = batch.features.clone()
    moved[0, 6:] += 100.0  # padding of clip 0
    again = teacher_targets(teacher, moved, batch.valid, layers=0)
    torch.testing.assert_close(again[0, :6], every[0, :6])


def test_teacher_loss_is_the_mean_squared_error_over_valid_frames():
    valid = torch.tensor([[True, True, False]])
    targets = torch.zeros(1, 3, 2)
    prediction = torch.tensor([[[1.0, 1.0], [3.0, 3.0], [100.0, 100.0]]])
    assert teacher_loss(prediction, targets, valid).item() == pytest.approx(5.0)
    none = teacher_loss(prediction, targets, torch.zeros(1, 3, dtype=torch.bool))
    assert none.item() == 0.0


def test_pretraining_loss_weighs_reconstruction_and_teacher_terms():
    torch.manual_seed(0)
    model = MusiCoder(CONFIG, regressor=True)
    batch = masked_batch()
    out = model(batch.masked_input, batch.valid)
    assert out.prediction.shape == (3, 8, CONFIG.hidden)
    targets = teacher_targets(make_teacher(model.encoder), batch.features, batch.valid, 0)
    plain = reconstruction_loss(out.reconstruction, batch).total.item()
    config = LossConfig(reconstruction_weight=0.25, teacher_weight=2.0)
    loss = pretraining_loss(out, batch, config, targets)
    expected = teacher_loss(out.prediction, targets, batch.valid).item()
    assert loss.teacher.item() == pytest.approx(expected) and expected > 0
    assert loss.total.item() == pytest.approx(0.25 * plain + 2.0 * expected)
    only = pretraining_loss(
        out, batch, LossConfig(reconstruction_weight=0, teacher_weight=1), targets
    )
    only.total.backward()  # the unused reconstruction head still gets (zero) gradients
    assert all(p.grad is not None for p in model.parameters())
    assert model.head.net[0].weight.grad.abs().sum().item() == 0.0
    with pytest.raises(ValueError, match="regression head and targets"):
        pretraining_loss(out, batch, config)
    bare = MusiCoder(CONFIG)(batch.masked_input, batch.valid)
    with pytest.raises(ValueError, match="regression head and targets"):
        pretraining_loss(bare, batch, config, targets)


def test_teacher_term_on_masked_frames_only_ignores_the_visible_ones():
    torch.manual_seed(0)
    model = MusiCoder(CONFIG, regressor=True)
    batch = masked_batch()
    out = model(batch.masked_input, batch.valid)
    targets = teacher_targets(make_teacher(model.encoder), batch.features, batch.valid, 0)
    config = LossConfig(teacher_weight=1.0, teacher_frames="masked")
    masked = pretraining_loss(out, batch, config, targets).teacher
    frames = teacher_frames(batch, config)
    assert torch.equal(frames, batch.valid & batch.cfm) and frames.sum() < batch.valid.sum()
    assert masked.item() == pytest.approx(teacher_loss(out.prediction, targets, frames).item())
    moved = targets.clone()
    moved[~frames] += 5.0  # visible frames' targets do not count
    assert pretraining_loss(out, batch, config, moved).teacher.item() == pytest.approx(
        masked.item()
    )
    everything = LossConfig(teacher_weight=1.0)
    assert pretraining_loss(out, batch, everything, moved).teacher.item() > masked.item() + 1.0


@pytest.mark.parametrize(
    "knobs, message",
    [
        ({"teacher_weight": -1.0}, "teacher_weight"),
        ({"reconstruction_weight": -1.0}, "reconstruction_weight"),
        ({"reconstruction_weight": 0.0}, "nothing would be trained"),
        ({"teacher_decay": 1.5}, "teacher_decay"),
        ({"teacher_decay": -0.1}, "teacher_decay"),
        ({"teacher_layers": -1}, "teacher_layers"),
        ({"teacher_frames": "visible"}, "teacher_frames"),
    ],
)
def test_loss_config_refuses_bad_teacher_knobs(knobs, message):
    with pytest.raises(ValueError, match=message):
        LossConfig(**knobs)
