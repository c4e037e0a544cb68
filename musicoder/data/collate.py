"""Collation: clips `[(T_i, C)]` into one padded, normalized float32 `Batch` (DESIGN §6, §7).

A worker keeps each clip as stored (float16) until it is cropped; `collate` copies the crops
straight into one preallocated float32 batch (converting on the copy; in a DataLoader worker
that batch lives in shared memory, so handing it to the trainer copies nothing) and normalizes
them there in place.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import get_worker_info

from musicoder.model import Batch


def _empty_float32(*shape: int) -> torch.Tensor:
    """An uninitialized float32 tensor; inside a DataLoader worker it is allocated in shared
    memory, so sending it to the training process moves a handle, not the data (as torch's
    `default_collate` does)."""
    if get_worker_info() is None:
        return torch.empty(shape)
    storage = torch.UntypedStorage._new_shared(math.prod(shape) * 4)
    return torch.empty(0).set_(storage, 0, shape)


def collate(
    clips: Sequence[np.ndarray | torch.Tensor],
    *,
    mean: torch.Tensor | None = None,
    inv_std: torch.Tensor | None = None,
) -> Batch:
    """Copy clips `[(T_i, C)]` (any float dtype) into one preallocated float32 batch padded with
    zeros to the longest, marking real frames in `valid`; with `mean` and `inv_std` (C,), each
    clip is normalized in place there, `(x - mean) * inv_std` as one fused multiply-add.
    """
    lengths = [int(clip.shape[0]) for clip in clips]
    b, t = len(clips), max(lengths)
    features = _empty_float32(b, t, clips[0].shape[1])  # (B, T, C)
    shift = None if mean is None else -mean * inv_std
    for i, (clip, n) in enumerate(zip(clips, lengths, strict=True)):
        rows = features[i, :n]
        rows.copy_(torch.as_tensor(clip))  # float16 -> float32 on the copy (faster than numpy)
        if shift is not None:
            torch.addcmul(shift, rows, inv_std, out=rows)  # one pass, in cache after the copy
        features[i, n:].zero_()
    valid = torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]  # (B, T)
    return Batch(features=features, valid=valid)
