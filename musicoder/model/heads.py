"""Reconstruction head and the pre-training model (encoder + head).

Pre-training needs frame reconstructions; downstream code needs only the encoder, which is why
the head lives apart and is not part of an export (`musicoder.pretrained`).
"""

from __future__ import annotations

import logging
from typing import NamedTuple

from torch import Tensor, nn

from musicoder.model.config import MusiCoderConfig
from musicoder.model.contrastive import pool_valid
from musicoder.model.encoder import MusiCoderEncoder, init_weights

log = logging.getLogger(__name__)


class ReconstructionHead(nn.Module):
    """Linear -> GELU -> LayerNorm -> Linear, from hidden back to the input channels."""

    def __init__(self, config: MusiCoderConfig) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(config.hidden, config.hidden),
            nn.GELU(),
            nn.LayerNorm(config.hidden),
            nn.Linear(config.hidden, config.input_dim),
        )
        self.apply(init_weights)

    def forward(self, hidden: Tensor) -> Tensor:
        """(B, T, hidden) -> (B, T, input_dim)."""
        return self.net(hidden)


class ProjectionHead(nn.Module):
    """Linear -> GELU -> Linear, from clip-pooled hidden states to the contrastive space."""

    def __init__(self, config: MusiCoderConfig, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(config.hidden, config.hidden), nn.GELU(), nn.Linear(config.hidden, dim)
        )
        self.apply(init_weights)

    def forward(self, pooled: Tensor) -> Tensor:
        """(B, hidden) -> (B, dim)."""
        return self.net(pooled)


class ModelOutput(NamedTuple):
    """Pre-training model result (a NamedTuple so ZeRO-3 can walk it; see `EncoderOutput`).

    Attributes:
        reconstruction: (B, T, input_dim) predicted features.
        last_hidden: (B, T, hidden) encoder output.
        hidden_states: Per-layer states (see `EncoderOutput`) or None.
        projection: (B, projection_dim) projected clip-mean of `last_hidden`, or None without a
            projection head.
        prediction: (B, T, hidden) the regression head's prediction of the teacher's targets,
            or None without that head.
    """

    reconstruction: Tensor
    last_hidden: Tensor
    hidden_states: list[Tensor] | None = None
    projection: Tensor | None = None
    prediction: Tensor | None = None


class MusiCoder(nn.Module):
    """Encoder + reconstruction head, trained with CFM/CCM (DESIGN §6). It never masks.

    Args:
        config: Model shape; see `MusiCoderConfig`.
        projection_dim: Width of a projection head for the contrastive term
            (`LossConfig.projection_dim`); 0 = none. Like the reconstruction head, it is not
            part of an export.
        regressor: Add a linear head that predicts the teacher's targets from the last layer
            (`LossConfig.teacher_weight` > 0); not part of an export either.
    """

    def __init__(
        self, config: MusiCoderConfig, *, projection_dim: int = 0, regressor: bool = False
    ) -> None:
        super().__init__()
        self.config = config
        self.encoder = MusiCoderEncoder(config)
        self.head = ReconstructionHead(config)
        self.projector = ProjectionHead(config, projection_dim) if projection_dim else None
        self.regressor = nn.Linear(config.hidden, config.hidden) if regressor else None
        if self.regressor is not None:
            init_weights(self.regressor)

    def forward(
        self, x: Tensor, valid: Tensor, *, output_hidden_states: bool = False
    ) -> ModelOutput:
        """Reconstruct features from (masked) input.

        Args:
            x: (B, T, input_dim), usually `Batch.masked_input`.
            valid: (B, T) bool, True = real frame.
            output_hidden_states: Also return every layer's output.

        Returns:
            `ModelOutput`.
        """
        enc = self.encoder(x, valid, output_hidden_states=output_hidden_states)
        projection = None
        if self.projector is not None:
            projection = self.projector(pool_valid(enc.last_hidden, valid))
        return ModelOutput(
            reconstruction=self.head(enc.last_hidden),
            last_hidden=enc.last_hidden,
            hidden_states=enc.hidden_states,
            projection=projection,
            prediction=None if self.regressor is None else self.regressor(enc.last_hidden),
        )
