"""Trivial predictors of the masked cells, the yardstick of the reconstruction loss (DESIGN §12).

A model that only interpolates has learned nothing a probe could use. These predictors see what
the model sees (valid frames outside CFM spans, channels outside the CCM band) and fill the
rest without learning:

- `interpolate`: the CCM band is filled per frame by linear interpolation between the channels
  on either side of it, then each CFM span by linear interpolation in time between the visible
  frames on either side (the nearest one at a clip's edge).
- `clip_mean`: every hidden cell gets its channel's mean over the clip's visible frames (the
  CCM band, never visible, gets the interpolated value of that mean).

`baseline_losses` scores both with the training loss on the same masks, so the model's CFM and
CCM losses read as ratios against them. Pure functions of a masked `Batch`; no I/O, no RNG.
"""

from __future__ import annotations

import torch
from torch import Tensor

from musicoder.model.batch import Batch
from musicoder.model.loss import LossOutput, reconstruction_loss
from musicoder.model.pooling import weighted_mean

BASELINES = ("interpolate", "clip_mean")


def _interpolate(x: Tensor, known: Tensor, dim: int) -> Tensor:
    """Linear interpolation of `x` (B, T, C) along `dim` (1: time, 2: channels) between the
    positions where `known` (B, N) is True, N = x.shape[dim]; copies the nearest known value
    past the first or last one, and gives 0 where a row has none."""
    n = known.shape[1]
    pos = torch.arange(n, device=x.device).expand_as(known)  # (B, N)
    prev = torch.where(known, pos, -1).cummax(dim=1).values
    nxt = torch.where(known, pos, n).flip(1).cummin(dim=1).values.flip(1)
    has_prev, has_next = prev >= 0, nxt < n
    lo, hi = prev.clamp(0, n - 1), nxt.clamp(0, n - 1)
    frac = (pos - lo).to(x.dtype) / (hi - lo).clamp(min=1).to(x.dtype)
    frac = torch.where(has_prev & has_next, frac, (~has_prev).to(x.dtype))  # (B, N)

    def along(t: Tensor) -> Tensor:  # (B, N) -> broadcastable against x along `dim`
        return t[:, :, None] if dim == 1 else t[:, None, :]

    shape = x.shape
    x_lo = x.gather(dim, along(lo).expand(shape))
    x_hi = x.gather(dim, along(hi).expand(shape))
    out = x_lo + (x_hi - x_lo) * along(frac)
    out = torch.where(along(has_prev | has_next), out, torch.zeros_like(out))
    return torch.where(along(known), x, out)


def _visible(batch: Batch) -> tuple[Tensor, Tensor]:
    """(frames the model sees (B, T), channels it sees (B, C)) of a masked batch."""
    b, _, c = batch.features.shape
    frames = batch.valid & ~batch.cfm if batch.cfm is not None else batch.valid
    channels = (
        ~batch.ccm
        if batch.ccm is not None
        else torch.ones(b, c, dtype=torch.bool, device=frames.device)
    )
    return frames, channels


def predict(batch: Batch, baseline: str) -> Tensor:
    """A trivial reconstruction `(B, T, C)` of a masked batch.

    Args:
        batch: Batch with `features` (the target) and the masks `cfm`/`ccm` drawn.
        baseline: `interpolate` or `clip_mean` (see the module docstring).

    Raises:
        ValueError: Unknown baseline name.
    """
    if baseline not in BASELINES:
        raise ValueError(f"baseline: must be one of {', '.join(BASELINES)}, got {baseline!r}")
    frames, channels = _visible(batch)
    x = _interpolate(batch.features.float(), channels, dim=2)  # CCM band from its neighbours
    if baseline == "interpolate":
        return _interpolate(x, frames, dim=1)
    return weighted_mean(x, frames[:, :, None].to(x.dtype), dim=1).expand_as(x)


def baseline_losses(batch: Batch) -> dict[str, LossOutput]:
    """The training loss of each trivial predictor on a masked batch's cells."""
    return {name: reconstruction_loss(predict(batch, name), batch) for name in BASELINES}
