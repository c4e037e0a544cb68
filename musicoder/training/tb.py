"""TensorBoard output of pre-training (rank 0 only): scalars and reconstruction images.

Metrics go here, not into log lines (STYLE 17). Other ranks get a writer that does nothing, so
the loop calls it unconditionally.
"""

from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger(__name__)

TB_DIR = "tensorboard"
IMAGE_TAG = "reconstruction"
SEPARATOR_ROWS = 2  # white rows between the panels of the image


class TrainLogger:
    """Scalars and images under `output_dir/tensorboard/`, written by rank 0 only."""

    def __init__(self, output_dir: str, *, enabled: bool) -> None:
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(os.path.join(output_dir, TB_DIR))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Write each `name -> value` at `step` (names like `loss/total`)."""
        if self.writer is None:
            return
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)

    def reconstruction(
        self,
        step: int,
        features: torch.Tensor,
        masked: torch.Tensor,
        reconstruction: torch.Tensor,
        valid: torch.Tensor,
    ) -> None:
        """One clip as an image: input, masked input and reconstruction stacked vertically,
        channels on the vertical axis, time on the horizontal; each panel `(C, T)`.

        Args:
            features, masked, reconstruction: `(T, C)` of one clip.
            valid: `(T,)` bool; padding is cut off.
        """
        if self.writer is None:
            return
        length = max(int(valid.sum()), 1)
        panels = [
            p[:length].detach().float().cpu().T.flip(0) for p in (features, masked, reconstruction)
        ]  # device tensors come back to the CPU here
        lo, hi = panels[0].min(), panels[0].max()  # one scale, set by the input, for all three
        gap = torch.ones(SEPARATOR_ROWS, length)
        rows = [panels[0], gap, panels[1], gap, panels[2]]
        image = torch.cat(
            [((p - lo) / (hi - lo + 1e-6)).clamp(0, 1) if p is not gap else p for p in rows]
        )  # (3C + gaps, T)
        self.writer.add_image(IMAGE_TAG, image, step, dataformats="HW")

    def flush(self) -> None:
        """Push pending events to disk."""
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
