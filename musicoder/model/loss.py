"""Masked reconstruction objective: L1 over the cells CFM and CCM ask the model to predict.

Predicted cells are (CFM frames x all channels) and (valid frames x CCM channels). The total
averages over their union, each cell counted once; the CFM and CCM parts average over their own
cells and are reported for monitoring. A part without cells is exactly 0 (not NaN) and still
part of the autograd graph, so an all-unmasked batch never breaks a step.

`LossConfig.visible_weight` (0 in the paper) adds the L1 mean over the visible valid cells,
times that weight: the model must then also pass each frame's own content through to its last
layer, not only what the context predicts of it (docs/decisions.md has the measured effect).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor

from musicoder.model.batch import Batch

log = logging.getLogger(__name__)


@dataclass
class LossConfig:
    """Knobs of the reconstruction objective.

    Attributes:
        visible_weight: Weight of the mean L1 over visible (unmasked, valid) cells, added to the
            masked-cell mean; 0 = masked cells only (the paper).
    """

    visible_weight: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.visible_weight:
            raise ValueError(f"loss.visible_weight: must be >= 0, got {self.visible_weight!r}")


@dataclass
class LossOutput:
    """Reconstruction loss and its parts.

    Attributes:
        total: The training loss: L1 mean over the union of CFM and CCM cells, plus
            `visible_weight` times the L1 mean over visible cells.
        cfm: Scalar L1 mean over CFM cells.
        ccm: Scalar L1 mean over CCM cells.
        visible: Scalar L1 mean over visible valid cells (0 when `visible_weight` is 0).
        cfm_cells: Number of CFM cells (frames x channels).
        ccm_cells: Number of CCM cells (valid frames x channels).
    """

    total: Tensor
    cfm: Tensor
    ccm: Tensor
    visible: Tensor
    cfm_cells: int
    ccm_cells: int


def _masked_mean(error: Tensor, cells: Tensor) -> tuple[Tensor, int]:
    count = int(cells.sum())
    return (error * cells).sum() / max(count, 1), count


def reconstruction_loss(
    reconstruction: Tensor, batch: Batch, *, visible_weight: float = 0.0
) -> LossOutput:
    """L1 reconstruction loss over predicted cells (DESIGN §6).

    Args:
        reconstruction: (B, T, C) model output.
        batch: Masked batch; `features` is the target, `cfm`/`ccm` (None = none) choose cells,
            padding (`valid` False) never counts.
        visible_weight: See `LossConfig`.

    Returns:
        `LossOutput`, computed in float32 whatever the reconstruction dtype.

    Raises:
        ValueError: `reconstruction` and `batch.features` differ in shape.
    """
    if reconstruction.shape != batch.features.shape:
        raise ValueError(
            f"reconstruction_loss: reconstruction {tuple(reconstruction.shape)} does not match "
            f"features {tuple(batch.features.shape)}"
        )
    b, t, c = batch.features.shape
    valid = batch.valid[:, :, None]  # (B, T, 1)
    no_frames = torch.zeros(b, t, dtype=torch.bool, device=valid.device)
    no_channels = torch.zeros(b, c, dtype=torch.bool, device=valid.device)
    cfm = batch.cfm if batch.cfm is not None else no_frames
    ccm = batch.ccm if batch.ccm is not None else no_channels
    cfm_cells = (cfm[:, :, None] & valid).expand(b, t, c)
    ccm_cells = valid & ccm[:, None, :]  # (B, T, C)
    error = (reconstruction.float() - batch.features.float()).abs()
    masked = cfm_cells | ccm_cells
    total, _ = _masked_mean(error, masked)
    cfm_loss, cfm_count = _masked_mean(error, cfm_cells)
    ccm_loss, ccm_count = _masked_mean(error, ccm_cells)
    visible = total.new_zeros(())
    if visible_weight:
        visible, _ = _masked_mean(error, valid & ~masked)
        total = total + visible_weight * visible
    return LossOutput(
        total=total,
        cfm=cfm_loss,
        ccm=ccm_loss,
        visible=visible,
        cfm_cells=cfm_count,
        ccm_cells=ccm_count,
    )
