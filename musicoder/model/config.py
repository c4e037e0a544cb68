"""Model configuration: the `MusiCoderConfig` dataclass and the named size variants.

The variant table (DESIGN §6) lives here as a dict so that code can build a variant without
reading YAML; `configs/model/<name>.yaml` mirrors it for the command line, and a test keeps the
two identical.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any, Literal

log = logging.getLogger(__name__)

VariantName = Literal["tiny", "base", "large", "xl"]

# name -> (num_layers, hidden, heads, ffn); DESIGN §6 table.
VARIANTS: dict[str, dict[str, int]] = {
    "tiny": {"num_layers": 2, "hidden": 128, "heads": 2, "ffn": 512},
    "base": {"num_layers": 12, "hidden": 768, "heads": 12, "ffn": 3072},
    "large": {"num_layers": 24, "hidden": 1024, "heads": 16, "ffn": 4096},
    "xl": {"num_layers": 48, "hidden": 1600, "heads": 25, "ffn": 6400},
}


@dataclass
class MusiCoderConfig:
    """Shape and regularization of a MusiCoder encoder.

    Attributes:
        input_dim: Feature channels per frame (324 for musicoder324, 128 for logmel128).
        num_layers: Transformer encoder layers.
        hidden: Model width; must be divisible by `heads`.
        heads: Attention heads.
        ffn: Feed-forward inner width.
        dropout: Dropout on embeddings, attention weights and residual branches.
        max_frames: Longest sequence the sinusoidal position table covers.
        position_scale: Amplitude of the sinusoidal positions added to the projected inputs
            (1 = "Attention Is All You Need"). With BERT's 0.02 init the projected inputs have a
            mean square of about 0.13 per channel against the positions' 0.5, so at 1 about 80%
            of each frame's LayerNorm input is position (docs/decisions.md).
        activation_checkpointing: Recompute each layer in backward to save memory.
    """

    input_dim: int = 324
    num_layers: int = 2
    hidden: int = 128
    heads: int = 2
    ffn: int = 512
    dropout: float = 0.1
    max_frames: int = 2048
    position_scale: float = 1.0
    activation_checkpointing: bool = False

    def __post_init__(self) -> None:
        for key in ("input_dim", "num_layers", "hidden", "heads", "ffn", "max_frames"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"model.{key}: must be a positive integer, got {value!r}")
        if self.hidden % self.heads:
            raise ValueError(
                f"model.hidden: {self.hidden} is not divisible by model.heads={self.heads}"
            )
        if not (math.isfinite(self.position_scale) and self.position_scale >= 0):
            raise ValueError(
                f"model.position_scale: must be finite and >= 0, got {self.position_scale!r}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout: must be in [0, 1), got {self.dropout!r}")

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden // self.heads

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form, as written to an export's `config.json`."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> MusiCoderConfig:
        """Build from a plain dict, rejecting unknown keys.

        Args:
            data: Field name -> value.
            source: Where the dict came from, for error messages (e.g. a file URI).

        Raises:
            ValueError: An unknown key or an invalid value.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown model config key(s) {unknown}")
        return cls(**data)


def variant_config(name: VariantName, **overrides: Any) -> MusiCoderConfig:
    """Config of a named size variant (DESIGN §6), optionally with fields overridden.

    Args:
        name: One of `tiny`, `base`, `large`, `xl`.
        **overrides: Any `MusiCoderConfig` field, e.g. `input_dim=128` for logmel128.

    Returns:
        The validated config.

    Raises:
        ValueError: Unknown variant name or invalid override.
    """
    if name not in VARIANTS:
        raise ValueError(f"model variant: unknown name {name!r}, expected one of {list(VARIANTS)}")
    return MusiCoderConfig.from_dict({**VARIANTS[name], **overrides}, source=f"variant {name}")
