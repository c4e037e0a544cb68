"""Pooling an encoder's hidden states over time, for whole tracks of any length (DESIGN §8).

A track is cut into the fewest near-equal chunks that fit the model window (`chunk_bounds`),
chunks are padded into batches (`pad_chunks`), every hidden state is pooled over each chunk's
valid frames (`pool_layers`: mean, or mean and standard deviation), and the chunks' statistics
are merged into one vector per track weighted by length (`pool_track`), so a track's embedding
is the statistics over all its frames. Pure torch, no I/O.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch

from musicoder.model.encoder import MusiCoderEncoder

VAR_FLOOR = 1e-12  # pooled variances are clamped here before the square root


def chunk_bounds(num_frames: int, window: int) -> list[tuple[int, int]]:
    """Splits `num_frames` into the fewest near-equal chunks of at most `window` frames.

    Equal chunks (sizes differ by at most one) avoid a tiny trailing chunk whose prediction
    would weigh as much as a full one when chunk predictions are averaged per track.
    """
    if num_frames < 1 or window < 1:
        raise ValueError(
            f"chunk_bounds: need num_frames >= 1 and window >= 1, got {num_frames}, {window}"
        )
    count = math.ceil(num_frames / window)
    edges = [round(i * num_frames / count) for i in range(count + 1)]
    return list(itertools.pairwise(edges))


def pad_chunks(chunks: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pads `[T_i, C]` chunks into one batch.

    Returns:
        `(features, valid)`: `(B, T, C)` float32 zero-padded and `(B, T)` bool, True = real frame.
    """
    longest = max(c.shape[0] for c in chunks)
    features = chunks[0].new_zeros((len(chunks), longest, chunks[0].shape[1]), dtype=torch.float32)
    valid = torch.zeros((len(chunks), longest), dtype=torch.bool, device=chunks[0].device)
    for i, chunk in enumerate(chunks):
        features[i, : chunk.shape[0]] = chunk
        valid[i, : chunk.shape[0]] = True
    return features, valid


def weighted_mean(x: torch.Tensor, weights: torch.Tensor, dim: int) -> torch.Tensor:
    """Mean of `x` along `dim` weighted by `weights` (broadcast to `x`; 1 = a valid frame, 0 =
    padding or masked), keeping `dim`; zeros where the weights sum to 0."""
    return (x * weights).sum(dim, keepdim=True) / weights.sum(dim, keepdim=True).clamp(min=1.0)


POOLINGS = ("meanstd", "mean")
DEFAULT_POOLING = "meanstd"


def check_pooling(pooling: str) -> str:
    """Returns `pooling` if it is a known pooling, else raises a one-line ValueError."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling: must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    return pooling


def pool_layers(
    model: MusiCoderEncoder,
    features: torch.Tensor,
    valid: torch.Tensor,
    *,
    pooling: str = DEFAULT_POOLING,
) -> torch.Tensor:
    """Pools every hidden state over the valid frames of each chunk.

    Args:
        model: The encoder.
        features: `(B, T, C)` normalized features.
        valid: `(B, T)` bool, True = real frame.
        pooling: `meanstd`: mean and standard deviation over time, concatenated (statistics
            pooling; the default, see docs/decisions.md); `mean`: the mean only.

    Returns:
        `(B, L + 1, D)`: the input embedding and each layer's output, pooled over time;
        D = 2H for `meanstd` (`[..., :H]` is the mean), H for `mean`.
    """
    hidden = model(features, valid, output_hidden_states=True).hidden_states
    stacked = torch.stack(hidden, dim=1)  # (B, L+1, T, H)
    weights = valid.to(stacked.dtype)[:, None, :, None]  # (B, 1, T, 1)
    mean = weighted_mean(stacked, weights, dim=2)  # (B, L+1, 1, H)
    if check_pooling(pooling) == "mean":
        return mean.squeeze(2)
    var = weighted_mean((stacked - mean).square(), weights, dim=2).squeeze(2)
    mean = mean.squeeze(2)
    # Clamped: a one-frame chunk has variance 0, where sqrt's gradient is infinite (NaN when
    # fine-tuning); clamp passes no gradient there.
    return torch.cat([mean, var.clamp(min=VAR_FLOOR).sqrt()], dim=-1)


def pool_track(
    states: torch.Tensor,
    num_frames: int,
    window: int,
    *,
    layer: int = -1,
    pooling: str = DEFAULT_POOLING,
) -> torch.Tensor:
    """One vector per track from its per-chunk pooled states `(n_chunks, L + 1, D)` → `[D]`.

    Chunks are weighted by their length, so the result is `layer`'s statistics over every frame
    of the track: the mean over all frames, and for `meanstd` (states from `pool_layers` with
    the same `pooling`) the standard deviation over all frames, chunk variances and the spread
    of chunk means combined.
    """
    lengths = torch.tensor(
        [e - s for s, e in chunk_bounds(num_frames, window)], dtype=torch.float32
    )
    share = (lengths / lengths.sum())[:, None]  # (n_chunks, 1)
    chunks = states[:, layer]  # (n_chunks, D)
    if check_pooling(pooling) == "mean" or len(chunks) == 1:
        return (chunks * share).sum(0)
    hidden = chunks.shape[-1] // 2
    mean, std = chunks[:, :hidden], chunks[:, hidden:]
    total_mean = (mean * share).sum(0)
    total_var = ((std.square() + (mean - total_mean).square()) * share).sum(0)
    return torch.cat([total_mean, total_var.clamp(min=VAR_FLOOR).sqrt()])
