"""Teacher targets (`loss.teacher_weight`): predict what a slowly moving copy of the encoder
says about the unmasked clip (data2vec; BYOL's predictor on a target network).

Masked reconstruction asks for the input back, which interpolation across a span nearly gives
away, and it teaches the input projection to keep only what reconstruction needs
(docs/decisions.md). Here the target is the teacher's contextual states of the clip the student
saw masked: the mean over the teacher's last `teacher_layers` layer outputs, each normalized
per frame (LayerNorm without affine, so padding never leaks into a target). The teacher is an
exponential moving average of the student's encoder (`ema_update`), never trained by
gradients. At the start it is the random-init encoder itself: the student first learns to
predict a random network's contextual features from a corrupted view, which BYOL found to give
better features than that random network. The teacher is fp32 whatever the training precision
(an EMA step of 1e-3 is below bf16's resolution), lives beside the DeepSpeed engine, and is
saved with each checkpoint (`musicoder.training.checkpoint.TEACHER_FILE`); it is not part of
an export. Pure torch, no I/O.
"""

from __future__ import annotations

import copy
import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from musicoder.model.encoder import MusiCoderEncoder

log = logging.getLogger(__name__)


def make_teacher(encoder: MusiCoderEncoder) -> MusiCoderEncoder:
    """An fp32 copy of `encoder` (built whole, before any ZeRO partitioning), frozen, in eval
    mode (no dropout in its targets)."""
    teacher = copy.deepcopy(encoder).float().eval()
    teacher.requires_grad_(False)
    return teacher


@torch.no_grad()
def teacher_targets(
    teacher: MusiCoderEncoder, features: Tensor, valid: Tensor, layers: int
) -> Tensor:
    """The teacher's targets for an unmasked batch.

    Args:
        teacher: The teacher encoder.
        features: `(B, T, C)` unmasked features.
        valid: `(B, T)` bool, True = real frame.
        layers: How many of the last layer outputs to average (0 = all Transformer layers).

    Returns:
        `(B, T, hidden)` float32: the mean of the chosen layers' outputs, each LayerNorm-ed per
        frame without affine parameters.
    """
    states = teacher(features.float(), valid, output_hidden_states=True).hidden_states
    chosen = states[1:][-layers:] if layers else states[1:]
    normed = [F.layer_norm(s.float(), s.shape[-1:]) for s in chosen]
    return torch.stack(normed).mean(0)


def teacher_loss(prediction: Tensor, targets: Tensor, frames: Tensor) -> Tensor:
    """Mean squared error per cell of `(B, T, H)` tensors over the `(B, T)` bool `frames` (the
    valid ones, or only the masked ones: `LossConfig.teacher_frames`); 0 without any."""
    cells = frames[:, :, None].to(torch.float32)
    error = (prediction.float() - targets).pow(2) * cells
    return error.sum() / (cells.sum() * targets.shape[-1]).clamp(min=1.0)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """`teacher <- decay * teacher + (1 - decay) * student`, parameter by parameter in fp32
    (decay 0 copies the student). The student's parameters must be whole: under ZeRO-3 the
    caller gathers them first."""
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.lerp_(s.detach().to(t.device, torch.float32), 1.0 - decay)
