"""CFM and CCM masking as pure, seeded functions on a collated `Batch` (DESIGN §6, STYLE §7).

Two public entry points: loader workers call `draw_masks`, which records every draw in the
Batch (`cfm`, `ccm`, and `frame_source`, what each frame shows) without writing a masked copy
of the features; the training device calls `model_input`, which builds that copy.
The model never masks. All randomness comes from the explicit `torch.Generator` (one draw of it
seeds the numpy generator that draws the masks on the CPU), inputs are never mutated, padding is
never masked nor used as a replacement. ~0.3 ms per 16 x 512 frames on one CPU thread.

CFM (Contiguous Frames Masking), per clip with n valid frames:
  budget = round(cfm_fraction * n) frames. Span lengths L ~ Geometric(span_p) on {1, 2, ...},
  clamped to [span_min, span_max], are drawn until their sum first reaches a threshold drawn
  from the budget alone (two integers around budget - 2.09, mixed so that the expected total is
  exactly the budget). Because that rule never looks at the span it is deciding on (a stopping
  time), the pooled span lengths keep their exact distribution (mean 4.15, where a "stop nearest
  the budget" rule measures ~4.11), each clip's masked total averages its budget, and it stays
  within one span of it; no span is truncated. The k spans are placed uniformly at random among
  all arrangements with at least one unmasked frame between neighbours, so spans neither overlap
  nor touch (each span is one visible run). Per span: `zero_prob` -> zeros, `random_prob` -> each
  frame replaced by a random valid frame of the same clip, else unchanged. Positions are counted
  over the valid frames, so a non-prefix `valid` mask also works.

CCM (Contiguous Channels Masking), per clip: one band inside [ccm_lo, ccm_hi), width uniform in
{0, ..., W}, start uniform given the width, zeroed over all valid frames.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from musicoder.model.batch import Batch
from musicoder.model.spans import first_distinct, span_tables

log = logging.getLogger(__name__)

ZERO, RANDOM, KEEP = 0, 1, 2  # per-span CFM actions


@dataclass
class MaskingConfig:
    """CFM/CCM parameters; defaults are DESIGN §6.

    The default CCM range [52, 324) is the mel + CQT part of the musicoder324 layout. When a
    batch has fewer channels than `ccm_hi` (e.g. logmel128, all of which is mel), the range
    falls back to every channel, [0, C), and W is recomputed from it (round(0.2 * 128) = 26);
    set `ccm_lo`/`ccm_hi` explicitly to choose another band.

    Attributes:
        cfm_fraction: Target fraction of each clip's valid frames to mask.
        span_p: Success probability of the geometric span-length distribution.
        span_min: Shortest span after clamping.
        span_max: Longest span after clamping.
        zero_prob: Probability a span is zeroed.
        random_prob: Probability a span is replaced by random frames of the same clip.
        ccm_lo: First channel of the CCM range.
        ccm_hi: One past the last channel of the CCM range.
        ccm_max_width: Largest band width W; None means round(ccm_width_fraction * (hi - lo)).
        ccm_width_fraction: See `ccm_max_width`.
        enable_cfm: Apply CFM.
        enable_ccm: Apply CCM.
    """

    cfm_fraction: float = 0.15
    span_p: float = 0.2
    span_min: int = 2
    span_max: int = 7
    zero_prob: float = 0.8
    random_prob: float = 0.1
    ccm_lo: int = 52
    ccm_hi: int = 324
    ccm_max_width: int | None = None
    ccm_width_fraction: float = 0.2
    enable_cfm: bool = True
    enable_ccm: bool = True

    def __post_init__(self) -> None:
        checks = {
            "cfm_fraction": 0.0 <= self.cfm_fraction < 1.0,
            "span_p": 0.0 < self.span_p <= 1.0,
            "span_min": 1 <= self.span_min,
            "span_max": self.span_min <= self.span_max,
            "zero_prob": 0.0 <= self.zero_prob <= 1.0,
            "random_prob": 0.0 <= self.random_prob <= 1.0 - self.zero_prob,
            "ccm_lo": 0 <= self.ccm_lo,
            "ccm_hi": self.ccm_lo < self.ccm_hi,
            "ccm_max_width": self.ccm_max_width is None
            or 0 <= self.ccm_max_width <= self.ccm_hi - self.ccm_lo,
            "ccm_width_fraction": 0.0 <= self.ccm_width_fraction <= 1.0,
        }
        for key, ok in checks.items():
            if not ok:
                raise ValueError(f"masking.{key}: invalid value {getattr(self, key)!r}")


def _round_half_up(x: float) -> int:
    """Round to nearest, halves up (Python's round() rounds halves to even)."""
    return math.floor(x + 0.5)


def _channel_band(cfg: MaskingConfig, num_channels: int) -> tuple[int, int, int]:
    """The CCM range and largest width for a batch with `num_channels` channels.

    Returns:
        (lo, hi, max_width); see `MaskingConfig` for the fallback when the range does not fit.
    """
    lo, hi = cfg.ccm_lo, cfg.ccm_hi
    if hi > num_channels:
        _log_band_fallback(lo, hi, num_channels)
        lo, hi = 0, num_channels
    width = cfg.ccm_max_width
    if width is None or cfg.ccm_hi != hi or cfg.ccm_lo != lo:
        width = _round_half_up(cfg.ccm_width_fraction * (hi - lo))
    return lo, hi, min(width, hi - lo)


@functools.lru_cache(maxsize=16)
def _log_band_fallback(lo: int, hi: int, num_channels: int) -> None:
    log.info(
        "CCM range [%d, %d) exceeds %d channels; using [0, %d)", lo, hi, num_channels, num_channels
    )


def _numpy_rng(generator: torch.Generator) -> np.random.Generator:
    """Numpy generator seeded by one draw of `generator` (masks stay a function of its state):
    drawing is ~50 ops on (16, 512) arrays, ~1-5 us each in numpy against 5-10 us in torch."""
    seed = torch.randint(0, 2**63 - 1, (1,), generator=generator, device=generator.device)
    return np.random.default_rng(int(seed))


def _frame_spans(
    valid: np.ndarray, cfg: MaskingConfig, rng: np.random.Generator
) -> tuple[np.ndarray, ...]:
    """Draw CFM spans.

    Returns:
        (rows, starts, lengths, action, n): for each of the M spans, its clip (M,), its first
        frame in valid-frame coordinates (column j = the j-th valid frame) (M,), its length
        (M,) and its action (M,); and (B,) valid counts.
    """
    b, t = valid.shape
    n = valid.sum(axis=1)  # (B,) valid frames per clip
    budget = np.floor(cfg.cfm_fraction * n + 0.5).astype(np.int64)
    most = int(budget.max()) if b else 0
    k_max = min(-(-(most + 1) // cfg.span_min) + 1, t) if b and cfg.enable_cfm else 0
    if k_max == 0:
        none = np.zeros(0, dtype=np.int64)
        return none, none, none, none, n

    size = 1 << max(6, most.bit_length())  # few distinct cached tables
    cdf, lo, p_hi = span_tables(cfg.span_p, cfg.span_min, cfg.span_max, size)
    u = rng.random((b, k_max + 1))  # threshold | span lengths
    lengths = cfg.span_min + np.searchsorted(cdf, u[:, 1:], side="right")  # (B, K) by inverse CDF
    cum = lengths.cumsum(axis=1)
    # Stop at the first span whose sum reaches a threshold drawn from the budget alone (see
    # `span_tables`). That is a stopping time, so by Wald's identity the pooled span
    # lengths keep their exact mean (4.15), and each clip's expected masked total is its budget.
    threshold = lo[budget] + (u[:, 0] < p_hi[budget])
    k = (cum - lengths < threshold[:, None]).sum(axis=1)  # threshold 0: no span
    slot = np.arange(k_max)
    fits = cum + slot <= n[:, None]  # k spans + (k - 1) gaps fit; monotone in k
    k = np.minimum(k, fits.sum(axis=1))
    used = slot < k[:, None]  # (B, K)
    total = (lengths * used).sum(axis=1)

    # Uniform non-touching placement: k distinct sorted c in {0..n-total} (k <= n-total+1 by
    # `fits`); start_i = c_i + sum(L_<i) leaves >= 1 free frame between neighbours.
    c = first_distinct(n - total + 1, k, k_max, rng)
    starts = c + cum - lengths  # (B, K), meaningful where used

    draw = rng.random((b, k_max))
    cuts = [cfg.zero_prob, cfg.zero_prob + cfg.random_prob]  # ZERO below, RANDOM, KEEP above
    action = np.searchsorted(cuts, draw, side="right")
    rows, slots = used.nonzero()  # (M,) each, clip-major: the used spans
    return rows, starts[rows, slots], lengths[rows, slots], action[rows, slots], n


def _draw_frames(
    valid: Tensor, cfg: MaskingConfig, rng: np.random.Generator
) -> tuple[Tensor, Tensor]:
    """Draw CFM; return cfm (B, T) bool and the frame sources (B, T) long: for each frame, the
    time index of the frame of the same clip that the model input shows there, -1 = zeros.
    Works on the F masked frames as one flat list, indexing (B * T,) views of the outputs."""
    mask = valid.cpu().numpy()
    b, t = mask.shape
    rows, starts, lengths, action, n = _frame_spans(mask, cfg, rng)
    frame_rows = np.repeat(rows, lengths)  # (F,) clip of each masked frame
    column = np.repeat(starts - (lengths.cumsum() - lengths), lengths) + np.arange(len(frame_rows))
    times = np.arange(t)  # (B, T): column j holds the time index of the j-th valid frame
    if not np.array_equal(mask, times < n[:, None]):  # not real frames first, then padding
        times = np.argsort(~mask, axis=1, kind="stable")
    times = np.broadcast_to(times, (b, t))
    flat = frame_rows * t + times[frame_rows, column]  # (F,) index into (B * T,)
    cfm = np.zeros(b * t, dtype=bool)
    cfm[flat] = True
    source = np.tile(np.arange(t), b)  # (B * T,) identity
    frame_action = np.repeat(action, lengths)
    source[flat[frame_action == ZERO]] = -1
    random = frame_action == RANDOM
    pick_rows = frame_rows[random]
    pick = (rng.random(len(pick_rows)) * n[pick_rows]).astype(np.int64)  # a uniform valid frame
    source[flat[random]] = times[pick_rows, pick]
    cfm, source = torch.from_numpy(cfm.reshape(b, t)), torch.from_numpy(source.reshape(b, t))
    return cfm.to(valid.device), source.to(valid.device)


def _draw_channels(
    b: int, c: int, cfg: MaskingConfig, rng: np.random.Generator, device: torch.device
) -> Tensor:
    """Draw CCM; return ccm (B, C) bool, one band per clip."""
    if not cfg.enable_ccm:
        return torch.zeros(b, c, dtype=torch.bool, device=device)
    lo, hi, max_width = _channel_band(cfg, c)
    u = rng.random((2, b))
    width = (u[0] * (max_width + 1)).astype(np.int64)  # u < 1, so floor(u * m) < m exactly
    start = lo + (u[1] * (hi - lo - width + 1)).astype(np.int64)  # uniform given the width
    channel = np.arange(c)
    ccm = (channel >= start[:, None]) & (channel < (start + width)[:, None])  # (B, C)
    return torch.from_numpy(ccm).to(device)


def _apply_frames(out: Tensor, frame_source: Tensor) -> None:
    """Apply frame sources to `out` (B, T, C) in place, writing only the changed rows of
    `out` viewed as (B * T, C); replacements are read first, so they show unmasked frames."""
    b, t, c = out.shape
    rows = out.view(b * t, c)  # (B * T, C), shares memory with out
    identity = torch.arange(t, device=out.device)
    moved = ((frame_source >= 0) & (frame_source != identity)).reshape(-1).nonzero().squeeze(1)
    flat = (frame_source + t * torch.arange(b, device=out.device)[:, None]).reshape(-1)
    replacement = rows.index_select(0, flat[moved])
    rows.index_fill_(0, (frame_source < 0).reshape(-1).nonzero().squeeze(1), 0.0)
    rows.index_copy_(0, moved, replacement)


def _apply_channels(out: Tensor, valid: Tensor, ccm: Tensor) -> None:
    """Zero the CCM channels of `out` (B, T, C) on valid frames, in place. A contiguous band on
    prefix-valid frames (what `_draw_channels` and collation make) is one strided slice per
    clip, so only the band's cells are touched; any other mask falls back to `masked_fill_`."""
    t = out.shape[1]
    n, width = valid.sum(dim=1), ccm.sum(dim=1)
    start = ccm.to(torch.int8).argmax(dim=1)  # first masked channel
    runs = (ccm[:, 1:] & ~ccm[:, :-1]).sum(dim=1) + ccm[:, 0]  # 1 for a single band
    prefix = valid.eq(torch.arange(t, device=out.device)[None, :] < n[:, None]).all(dim=1)
    simple = prefix & (runs == 1)
    bands = torch.stack([start, start + width, n, simple.long()], dim=1).tolist()
    for i, (first, stop, count, is_simple) in enumerate(bands):
        if is_simple:
            out[i, :count, first:stop].zero_()
        elif stop > first and count:
            out[i].masked_fill_(valid[i, :, None] & ccm[i][None, :], 0.0)


def _base(batch: Batch) -> Tensor:
    return batch.features if batch.masked_input is None else batch.masked_input


def _masked(base: Tensor, masks: Batch, dtype: torch.dtype | None = None) -> Tensor:
    """A copy of `base` (in `dtype`) with the masks' `frame_source` and `ccm` applied."""
    out = base.to(dtype or base.dtype, copy=True)
    if masks.frame_source is not None:
        _apply_frames(out, masks.frame_source)
    if masks.ccm is not None:
        _apply_channels(out, masks.valid, masks.ccm)
    return out


def model_input(batch: Batch, dtype: torch.dtype | None = None) -> Tensor:
    """The model's input for a batch: `masked_input` when set, else `features` with
    `frame_source` and `ccm` applied (each where set), built on the batch's device.

    Args:
        batch: A batch from `draw_masks` (or an unmasked one).
        dtype: Float dtype of the result (default: that of `features`).

    Returns:
        (B, T, C) tensor; a new one unless it is `masked_input` or `features` as they are.
    """
    if batch.masked_input is not None or (batch.frame_source is None and batch.ccm is None):
        base = _base(batch)
        return base if dtype is None else base.to(dtype)
    return _masked(batch.features, batch, dtype)


def draw_masks(batch: Batch, cfg: MaskingConfig, generator: torch.Generator) -> Batch:
    """CFM then CCM, drawn but not applied (what loader workers deliver); `model_input` builds
    the masked input from them on the training device. Random replacement frames come from the
    unmasked input, and the CCM band is hidden on every valid frame, replaced ones included.

    Args:
        batch: Collated batch (`features`, `valid`); a `masked_input` is dropped.
        cfg: Masking parameters.
        generator: Source of all randomness (on the batch's device).

    Returns:
        A new Batch with `cfm`, `ccm` and `frame_source` set and `masked_input` None.
    """
    b, _, c = batch.features.shape
    rng = _numpy_rng(generator)
    cfm, fs = _draw_frames(batch.valid, cfg, rng)
    ccm = _draw_channels(b, c, cfg, rng, batch.valid.device)
    return dataclasses.replace(batch, masked_input=None, cfm=cfm, ccm=ccm, frame_source=fs)
