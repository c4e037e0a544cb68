"""Masked reconstruction objective: L1 over the cells CFM and CCM ask the model to predict.

Predicted cells are (CFM frames x all channels) and (valid frames x CCM channels). The total
averages over their union, each cell counted once; the CFM and CCM parts average over their own
cells and are reported for monitoring. A part without cells is exactly 0 (not NaN) and still
part of the autograd graph, so an all-unmasked batch never breaks a step.

`LossConfig.visible_weight` (0 in the paper) adds the L1 mean over the visible valid cells,
times that weight: the model must then also pass each frame's own content through to its last
layer, not only what the context predicts of it (docs/decisions.md has the measured effect).

`LossConfig.contrastive_weight` (0 in the paper) adds a contrastive term between the two halves
of each crop (`musicoder.model.contrastive`); `LossConfig.teacher_weight` (0 in the paper) adds
the regression onto an EMA teacher's states (`musicoder.model.teacher`), and
`LossConfig.reconstruction_weight` (1 in the paper) scales the reconstruction part.
`pretraining_loss` combines the parts.
"""

from __future__ import annotations

import logging
import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from musicoder.model.batch import Batch
from musicoder.model.contrastive import contrastive_loss
from musicoder.model.heads import ModelOutput
from musicoder.model.teacher import teacher_loss

log = logging.getLogger(__name__)


@dataclass
class LossConfig:
    """Knobs of the reconstruction objective.

    Attributes:
        visible_weight: Weight of the mean L1 over visible (unmasked, valid) cells, added to the
            masked-cell mean; 0 = masked cells only (the paper).
        contrastive_weight: Weight of the contrastive term between the two halves of each crop;
            0 = none (the paper). Above 0 the model trains on half crops (`data.max_frames` / 2
            frames, which must be even) and gains a projection head that is not exported.
        contrastive_temperature: Softmax temperature of that term.
        contrastive_dim: Width of the projection head's output.
        reconstruction_weight: Weight of the whole reconstruction part (masked cells and
            `visible_weight` x visible cells); 1 = the paper. At 0 the reconstruction head stays
            in the model (and in validation's diagnostics) but learns nothing.
        teacher_weight: Weight of the mean squared error between a regression head on the last
            layer and an EMA teacher's targets for the unmasked clip; 0 = none (the paper).
            Above 0 the model gains that head (not exported) and training keeps an fp32 teacher.
        teacher_decay: EMA decay of the teacher per optimizer step (0.999: a memory of about
            1,000 steps); 1 = a frozen teacher, the random-init encoder throughout (its targets
            keep the full rank of a random network's states).
        teacher_layers: How many of the teacher's last layer outputs a target averages; 0 = all.
        teacher_frames: Which frames the teacher term is computed on: `all` valid frames (CCM
            corrupts every frame of a clip it masks) or only the `masked` (CFM) frames, as
            data2vec does: then no frame's target can be read off the student's own input.
    """

    visible_weight: float = 0.0
    contrastive_weight: float = 0.0
    contrastive_temperature: float = 0.1
    contrastive_dim: int = 128
    reconstruction_weight: float = 1.0
    teacher_weight: float = 0.0
    teacher_decay: float = 0.999
    teacher_layers: int = 0
    teacher_frames: Literal["all", "masked"] = "all"

    def __post_init__(self) -> None:
        weights = (
            "visible_weight",
            "contrastive_weight",
            "reconstruction_weight",
            "teacher_weight",
        )
        for key in weights:
            if not 0.0 <= getattr(self, key):
                raise ValueError(f"loss.{key}: must be >= 0, got {getattr(self, key)!r}")
        if not (self.reconstruction_weight or self.contrastive_weight or self.teacher_weight):
            raise ValueError(
                "loss: reconstruction_weight, contrastive_weight and teacher_weight are all 0; "
                "nothing would be trained"
            )
        if not 0.0 <= self.teacher_decay <= 1.0:
            raise ValueError(f"loss.teacher_decay: must be in [0, 1], got {self.teacher_decay!r}")
        if self.teacher_frames not in ("all", "masked"):
            raise ValueError(f"loss.teacher_frames: 'all' or 'masked', got {self.teacher_frames!r}")
        if self.teacher_layers < 0:
            raise ValueError(f"loss.teacher_layers: must be >= 0, got {self.teacher_layers!r}")
        if not self.contrastive_temperature > 0:
            raise ValueError(
                f"loss.contrastive_temperature: must be > 0, got {self.contrastive_temperature!r}"
            )
        if self.contrastive_dim < 1:
            raise ValueError(f"loss.contrastive_dim: must be >= 1, got {self.contrastive_dim!r}")

    @property
    def projection_dim(self) -> int:
        """Output width of the model's projection head; 0 = no head (no contrastive term)."""
        return self.contrastive_dim if self.contrastive_weight else 0


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
        contrastive: Scalar contrastive term, or None when it is off (see `pretraining_loss`).
        teacher: Scalar teacher term, or None when it is off.
    """

    total: Tensor
    cfm: Tensor
    ccm: Tensor
    visible: Tensor
    cfm_cells: int
    ccm_cells: int
    contrastive: Tensor | None = None
    teacher: Tensor | None = None


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


def teacher_frames(batch: Batch, config: LossConfig) -> Tensor:
    """`(B, T)` bool: the frames the teacher term covers (`LossConfig.teacher_frames`)."""
    if config.teacher_frames == "all":
        return batch.valid
    if batch.cfm is None:
        return torch.zeros_like(batch.valid)
    return batch.valid & batch.cfm


def teacher_term(
    out: ModelOutput, batch: Batch, config: LossConfig, targets: Tensor | None
) -> Tensor:
    """The teacher term of `config` (unweighted) over its `teacher_frames`; training's loss and
    validation's `val/teacher` both use it.

    Raises:
        ValueError: No regression head output or no targets.
    """
    if out.prediction is None or targets is None:
        raise ValueError(
            "pretraining_loss: loss.teacher_weight > 0 needs a regression head and targets"
        )
    return teacher_loss(out.prediction, targets, teacher_frames(batch, config))


def pretraining_loss(
    out: ModelOutput, batch: Batch, config: LossConfig, targets: Tensor | None = None
) -> LossOutput:
    """The training loss of `config`: reconstruction times `reconstruction_weight`, plus the
    contrastive and teacher terms when they are on.

    Args:
        out: Model output for `batch` (with `projection` when `config.contrastive_weight` > 0,
            `prediction` when `config.teacher_weight` > 0).
        batch: The masked batch the model saw (halves, when the contrastive term is on).
        config: Loss knobs.
        targets: `(B, T, hidden)` teacher targets for `batch` (`teacher_targets`), needed when
            `config.teacher_weight` > 0.

    Raises:
        ValueError: A term is on but its head output or targets are missing.
    """
    loss = reconstruction_loss(
        out.reconstruction.float(), batch, visible_weight=config.visible_weight
    )
    total = config.reconstruction_weight * loss.total  # at 0 still in the graph: zero grads
    contrastive = teacher = None
    if config.contrastive_weight:
        if out.projection is None:
            raise ValueError(
                "pretraining_loss: loss.contrastive_weight > 0 needs a projection head"
            )
        contrastive = contrastive_loss(
            out.projection, batch.valid, temperature=config.contrastive_temperature
        )
        total = total + config.contrastive_weight * contrastive
    if config.teacher_weight:
        teacher = teacher_term(out, batch, config, targets)
        total = total + config.teacher_weight * teacher
    return dataclasses.replace(loss, total=total, contrastive=contrastive, teacher=teacher)
