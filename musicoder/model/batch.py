"""The `Batch` dataclass: the contract between data loading, masking, the model and the loss.

Collation builds `features` and `valid`; masking fills `cfm`, `ccm` and `frame_source` (the
loader workers, `draw_masks`) and possibly `masked_input`; the model reads
`model_input(batch)` (= `masked_input`, or the masks applied to `features` on the training
device) and `valid`; the loss reads `features`, `valid`, `cfm` and `ccm`. `features` are
normalized with the corpus mean and a std floored at `STD_FLOOR`, the one floor every
feature normalization in the project uses (the probe's standardization of pooled encoder
states only guards its division: `downstream.probe.STATE_STD_EPS`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

# Floor of a standard deviation wherever values are standardized (the loader's CMVN, exported
# encoders, the probe's inputs). Measured on musicoder324 features of synthetic music low-passed
# at 5 kHz (as low-bitrate MP3s are): the mel bands above the cut are constant but for the
# clips' edge frames (std 0.16 over 6 s clips; exactly 0 without the edges, as in long tracks),
# real channels start at 0.26 (chroma). 0.1 floors no measured channel, and keeps an unseen
# full-band track within ~16 / 0.1 = 160 after normalization (log features span ~16; real
# channels reach 85), where 1e-5 let it reach ~1e6 (tests/data/test_data_std_floor.py).
STD_FLOOR = 0.1


@dataclass
class Batch:
    """A collated, padded batch of feature sequences.

    Attributes:
        features: (B, T, C) float, normalized; the reconstruction target.
        valid: (B, T) bool, True = real frame, False = padding.
        masked_input: (B, T, C) model input after masking, or None before masking.
        cfm: (B, T) bool, frames to predict (Contiguous Frames Masking), or None.
        ccm: (B, C) bool, channels to predict (Contiguous Channels Masking), or None.
        frame_source: (B, T) int64, what CFM shows at each frame: the time index of a frame of
            the same clip (itself when unchanged, another for a random replacement), or -1 for
            zeros; None = frames unchanged.
    """

    features: Tensor
    valid: Tensor
    masked_input: Tensor | None = None
    cfm: Tensor | None = None
    ccm: Tensor | None = None
    frame_source: Tensor | None = None

    def __post_init__(self) -> None:
        if self.features.dim() != 3:
            shape = tuple(self.features.shape)
            raise ValueError(f"Batch.features: expected shape (B, T, C), got {shape}")
        b, t, c = self.features.shape
        expected = {
            "valid": (b, t),
            "masked_input": (b, t, c),
            "cfm": (b, t),
            "ccm": (b, c),
            "frame_source": (b, t),
        }
        for name, shape in expected.items():
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != shape:
                raise ValueError(f"Batch.{name}: expected shape {shape}, got {tuple(value.shape)}")
        for name in ("valid", "cfm", "ccm"):
            value = getattr(self, name)
            if value is not None and value.dtype != torch.bool:
                raise ValueError(f"Batch.{name}: expected dtype torch.bool, got {value.dtype}")
        if self.frame_source is not None and self.frame_source.dtype != torch.int64:
            dtype = self.frame_source.dtype
            raise ValueError(f"Batch.frame_source: expected dtype torch.int64, got {dtype}")

    def to(
        self,
        device: torch.device | str,
        dtype: torch.dtype | None = None,
        *,
        non_blocking: bool = False,
    ) -> Batch:
        """Copy to a device; `dtype` applies to the float tensors only (masks stay bool).

        Args:
            device: Target device.
            dtype: Optional float dtype for `features` and `masked_input`.
            non_blocking: Passed to `Tensor.to` (useful with pinned memory).

        Returns:
            A new Batch; this one is left unchanged.
        """
        moved = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is not None:
                cast = dtype if value.is_floating_point() else None
                value = value.to(device=device, dtype=cast, non_blocking=non_blocking)
            moved[field.name] = value
        return Batch(**moved)

    @property
    def num_channels(self) -> int:
        """C, the feature channels per frame."""
        return self.features.shape[-1]
