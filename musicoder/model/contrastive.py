"""Contrastive objective between the two halves of each crop (`loss.contrastive_weight`).

Masked reconstruction alone teaches frame-level structure that interpolation already gives
away (docs/decisions.md); a probe, however, reads states pooled over a whole clip. This term
asks the pooled states of two different stretches of one recording to agree and to differ from
those of the other recordings in the batch (NT-Xent, as in SimCLR; two crops of one clip, as in
COLA). Each crop is cut into its first and second half in time (`split_halves`): the model
trains on the halves, so one forward pass serves both objectives at the cost of half the
attention context. The masked input is the augmentation. Pure torch, no I/O.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor

from musicoder.model.batch import Batch
from musicoder.model.pooling import weighted_mean

log = logging.getLogger(__name__)


def split_halves(batch: Batch, inputs: Tensor) -> Batch:
    """Cuts every crop of a masked batch into two halves in time.

    Args:
        batch: `(B, T, C)` batch with its masks drawn; T must be even.
        inputs: `(B, T, C)` model input (the masks applied), as from `model_input`.

    Returns:
        A `(2B, T/2, C)` batch whose rows 2k and 2k+1 are the first and second half of crop k
        (the CCM band is shared by both halves), with `masked_input` set to the halved input
        (a CFM replacement frame may come from the other half: 10% of 15% of frames).

    Raises:
        ValueError: T is odd.
    """
    b, t, c = batch.features.shape
    if t % 2:
        raise ValueError(f"split_halves: need an even number of frames, got {t}")

    def halve(x: Tensor | None) -> Tensor | None:
        return None if x is None else x.reshape(2 * b, t // 2, *x.shape[2:])

    return Batch(
        features=halve(batch.features),
        valid=halve(batch.valid),
        masked_input=halve(inputs),
        cfm=halve(batch.cfm),
        ccm=None if batch.ccm is None else batch.ccm.repeat_interleave(2, dim=0),
    )


def pool_valid(hidden: Tensor, valid: Tensor) -> Tensor:
    """Mean of `(B, T, H)` states over each row's valid frames; `(B, H)` (zeros for none)."""
    return weighted_mean(hidden, valid.to(hidden.dtype)[:, :, None], dim=1).squeeze(1)


def contrastive_loss(projection: Tensor, valid: Tensor, *, temperature: float) -> Tensor:
    """NT-Xent over `2N` views where rows `2k` and `2k+1` are the positive pair.

    Args:
        projection: `(2N, D)` projected pooled states.
        valid: `(2N, T)` bool frames of each view; a pair with a view without valid frames (a
            crop of a clip shorter than half a crop) is left out of the mean.
        temperature: Softmax temperature on cosine similarities.

    Returns:
        Scalar float32 loss; exactly 0 (and still in the graph) when no pair counts.
    """
    n = projection.shape[0]
    if n % 2:
        raise ValueError(f"contrastive_loss: need pairs of views, got {n} rows")
    z = F.normalize(projection.float(), dim=-1)
    logits = z @ z.T / temperature
    logits = logits.masked_fill(torch.eye(n, dtype=torch.bool, device=z.device), float("-inf"))
    partner = torch.arange(n, device=z.device) ^ 1  # 0<->1, 2<->3, ...
    per_view = F.cross_entropy(logits, partner, reduction="none")
    usable = valid.any(dim=1)
    usable = (usable & usable[partner]).float()
    return (per_view * usable).sum() / usable.sum().clamp(min=1.0)


def pair_accuracy(projection: Tensor) -> Tensor:
    """Fraction of views whose most similar other view is their partner (a monitoring metric)."""
    n = projection.shape[0]
    z = F.normalize(projection.float(), dim=-1)
    sim = (z @ z.T).masked_fill(torch.eye(n, dtype=torch.bool, device=z.device), float("-inf"))
    partner = torch.arange(n, device=z.device) ^ 1
    return (sim.argmax(dim=1) == partner).float().mean()
