"""CFM and CCM masking as pure, seeded functions on a collated `Batch` (DESIGN §6, STYLE §7).

Loader workers call `draw_masks`: it records every draw in the Batch (`cfm`, `ccm`, and
`frame_source`, what each frame shows) without writing a masked copy of the features, which
`model_input` builds on the training device; `apply_masking` does both (same draws, same result).
The model never masks. All randomness comes from the explicit `torch.Generator`, inputs are never
mutated, padding is never masked nor used as a replacement. ~0.8 ms per 16 x 512 frames.

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

import bisect
import dataclasses
import functools
import logging
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from musicoder.model.batch import Batch

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


def round_half_up(x: float) -> int:
    """Round to nearest, halves up (Python's round() rounds halves to even)."""
    return math.floor(x + 0.5)


def channel_band(cfg: MaskingConfig, num_channels: int) -> tuple[int, int, int]:
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
        width = round_half_up(cfg.ccm_width_fraction * (hi - lo))
    return lo, hi, min(width, hi - lo)


@functools.lru_cache(maxsize=16)
def _log_band_fallback(lo: int, hi: int, num_channels: int) -> None:
    log.info(
        "CCM range [%d, %d) exceeds %d channels; using [0, %d)", lo, hi, num_channels, num_channels
    )


def _rand(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> Tensor:
    return torch.rand(shape, generator=generator, device=device)


def span_pmf(cfg: MaskingConfig) -> dict[int, float]:
    """P(L = l) for the clamped span length: Geometric(span_p) on {1, 2, ...} clamped into
    [span_min, span_max]."""
    pmf = dict.fromkeys(range(cfg.span_min, cfg.span_max + 1), 0.0)
    for k in range(1, cfg.span_max):
        pmf[max(k, cfg.span_min)] += (1 - cfg.span_p) ** (k - 1) * cfg.span_p
    pmf[cfg.span_max] += (1 - cfg.span_p) ** (cfg.span_max - 1)
    return pmf


@functools.lru_cache(maxsize=16)
def _threshold_table(
    span_p: float, span_min: int, span_max: int, size: int
) -> tuple[Tensor, Tensor]:
    """Per budget 0..size-1: an integer threshold `lo` and the probability of using `lo + 1`,
    chosen so that the expected masked total equals the budget exactly.

    With threshold x, spans are drawn until their sum first reaches x (x = 0: no span). Its
    expected sum obeys g(0) = 0, g(x) = E[L] + sum_{l < x} P(L = l) g(x - l), which increases
    by about one per step (g(x) ~ x + 2.09 with the defaults); mixing the two thresholds around
    a budget hits it on average. Read-only tensors; cached per parameter set and size.
    """
    pmf = span_pmf(MaskingConfig(span_p=span_p, span_min=span_min, span_max=span_max))
    mean = sum(length * q for length, q in pmf.items())
    g = [0.0]
    for x in range(1, size + 2):
        g.append(mean + sum(q * g[x - length] for length, q in pmf.items() if length < x))
    lo = [bisect.bisect_right(g, budget) - 1 for budget in range(size)]
    p_hi = [(budget - g[x]) / (g[x + 1] - g[x]) for budget, x in enumerate(lo)]
    return torch.tensor(lo), torch.tensor(p_hi, dtype=torch.float32)


def _frame_spans(
    valid: Tensor, cfg: MaskingConfig, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Draw CFM spans.

    Returns:
        (rows, starts, lengths, action, n): for each of the M spans, its clip (M,), its first
        frame in valid-frame coordinates (column j = the j-th valid frame) (M,), its length
        (M,) and its action (M,); and (B,) valid counts.
    """
    b, t = valid.shape
    device = valid.device
    n = valid.sum(dim=1)  # (B,) valid frames per clip
    budget = torch.floor(cfg.cfm_fraction * n + 0.5).long()
    most = int(budget.max()) if b else 0
    k_max = min(-(-(most + 1) // cfg.span_min) + 1, t) if b and cfg.enable_cfm else 0
    if k_max == 0:
        none = torch.zeros(0, dtype=torch.long, device=device)
        return none, none, none, none, n

    # Span lengths: inverse-CDF geometric on {1, 2, ...}, clamped.
    u = _rand((b, k_max + 1), generator, device)
    steps = torch.log1p(-u[:, 1:]) / math.log1p(-cfg.span_p) if cfg.span_p < 1 else u[:, 1:] * 0
    lengths = (torch.floor(steps) + 1).clamp(cfg.span_min, cfg.span_max).long()
    cum = lengths.cumsum(dim=1)  # (B, K)
    # Stop at the first span whose sum reaches a threshold drawn from the budget alone (see
    # `_threshold_table`). That is a stopping time, so by Wald's identity the pooled span
    # lengths keep their exact mean (4.15), and each clip's expected masked total is its budget.
    size = 1 << max(6, most.bit_length())  # few distinct cached tables
    lo, p_hi = (
        x.to(device) for x in _threshold_table(cfg.span_p, cfg.span_min, cfg.span_max, size)
    )
    threshold = lo[budget] + (u[:, 0] < p_hi[budget]).long()
    k = ((cum - lengths) < threshold[:, None]).sum(dim=1)  # threshold 0: no span
    slot = torch.arange(k_max, device=device)
    fits = (cum + slot) <= n[:, None]  # k spans + (k - 1) gaps fit; monotone in k
    k = torch.minimum(k, fits.sum(dim=1))
    used = slot[None, :] < k[:, None]  # (B, K)
    total = torch.where(used, lengths, 0).sum(dim=1)

    # Uniform non-touching placement: k distinct sorted c in {0..n-total};
    # start_i = c_i + sum(L_<i) leaves >= 1 free frame between neighbours.
    keys = _rand((b, t + 1), generator, device)
    beyond = torch.arange(t + 1, device=device)[None, :] > (n - total)[:, None]
    keys = keys.masked_fill(beyond, -1.0)
    c = keys.topk(k_max, dim=1).indices  # random order; the first k are a uniform k-subset
    c = torch.where(used, c, t + 1).sort(dim=1).values
    starts = c + cum - lengths  # (B, K), meaningful where used

    draw = _rand((b, k_max), generator, device)
    action = torch.full((b, k_max), KEEP, dtype=torch.long, device=device)
    action = action.masked_fill(draw < cfg.zero_prob + cfg.random_prob, RANDOM)
    action = action.masked_fill(draw < cfg.zero_prob, ZERO)
    rows, slots = used.nonzero(as_tuple=True)  # (M,) each, clip-major: the used spans
    return rows, starts[rows, slots], lengths[rows, slots], action[rows, slots], n


def _draw_frames(
    valid: Tensor, cfg: MaskingConfig, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Draw CFM; return cfm (B, T) bool and the frame sources (B, T) long: for each frame, the
    time index of the frame of the same clip that the model input shows there, -1 = zeros.
    Works on the masked frames as one flat list, not on (B, T) grids."""
    (b, t), device = valid.shape, valid.device
    rows, starts, lengths, action, n = _frame_spans(valid, cfg, generator)
    span = torch.repeat_interleave(torch.arange(len(rows), device=device), lengths)  # (F,)
    offset = torch.arange(len(span), device=device) - (lengths.cumsum(0) - lengths)[span]
    frame_rows = rows[span]  # (F,) clip of each masked frame
    times = _valid_times(valid, n)
    time = times[frame_rows, starts[span] + offset]  # (F,) its time index
    cfm = torch.zeros(b, t, dtype=torch.bool, device=device)
    cfm[frame_rows, time] = True
    source = torch.arange(t, device=device).repeat(b, 1)  # (B, T) identity
    frame_action = action[span]
    zero, random = frame_action == ZERO, frame_action == RANDOM
    source[frame_rows[zero], time[zero]] = -1
    pick_rows = frame_rows[random]
    pick = _rand((len(pick_rows),), generator, device) * n[pick_rows]
    pick = torch.minimum(pick.long(), n[pick_rows] - 1)  # a uniform valid frame of the clip
    source[pick_rows, time[random]] = times[pick_rows, pick]
    return cfm, source


def _valid_times(valid: Tensor, n: Tensor) -> Tensor:
    """(B, T) long: column j holds the time index of the j-th valid frame of each clip."""
    times = torch.arange(valid.shape[1], device=valid.device)
    if bool(valid.eq(times < n[:, None]).all()):  # real frames first, then padding: identity
        return times.expand_as(valid)
    return torch.argsort((~valid).to(torch.int8), dim=1, stable=True)


def _draw_channels(
    b: int, c: int, cfg: MaskingConfig, generator: torch.Generator, device: torch.device
) -> Tensor:
    """Draw CCM; return ccm (B, C) bool, one band per clip."""
    if not cfg.enable_ccm:
        return torch.zeros(b, c, dtype=torch.bool, device=device)
    lo, hi, max_width = channel_band(cfg, c)
    width = torch.floor(_rand((b,), generator, device) * (max_width + 1)).long()
    width = width.clamp(max=max_width)
    start = lo + torch.floor(_rand((b,), generator, device) * (hi - lo - width + 1)).long()
    start = torch.minimum(start, hi - width)
    channel = torch.arange(c, device=device)[None, :]
    return (channel >= start[:, None]) & (channel < (start + width)[:, None])  # (B, C)


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
        batch: A batch from `apply_masking` or `draw_masks` (or an unmasked one).
        dtype: Float dtype of the result (default: that of `features`).

    Returns:
        (B, T, C) tensor; a new one unless it is `masked_input` or `features` as they are.
    """
    if batch.masked_input is not None or (batch.frame_source is None and batch.ccm is None):
        base = _base(batch)
        return base if dtype is None else base.to(dtype)
    return _masked(batch.features, batch, dtype)


def draw_masks(batch: Batch, cfg: MaskingConfig, generator: torch.Generator) -> Batch:
    """CFM then CCM, drawn but not applied (what loader workers deliver): `model_input` later
    builds what `apply_masking` with a generator in the same state returns as `masked_input`.

    Args:
        batch: Collated batch (`features`, `valid`); a `masked_input` is dropped.
        cfg: Masking parameters.
        generator: Source of all randomness (on the batch's device).

    Returns:
        A new Batch with `cfm`, `ccm` and `frame_source` set and `masked_input` None.
    """
    b, _, c = batch.features.shape
    cfm, fs = _draw_frames(batch.valid, cfg, generator)
    ccm = _draw_channels(b, c, cfg, generator, batch.valid.device)
    return dataclasses.replace(batch, masked_input=None, cfm=cfm, ccm=ccm, frame_source=fs)


def mask_frames(batch: Batch, cfg: MaskingConfig, generator: torch.Generator) -> Batch:
    """Contiguous Frames Masking (see the module docstring).

    Args:
        batch: Collated batch; `masked_input` is used as the base when already set.
        cfg: Masking parameters.
        generator: Source of all randomness (on the batch's device).

    Returns:
        A new Batch with `masked_input`, `cfm` (B, T) and `frame_source` set.
    """
    cfm, frame_source = _draw_frames(batch.valid, cfg, generator)
    out = _base(batch).clone()
    _apply_frames(out, frame_source)
    return dataclasses.replace(batch, masked_input=out, cfm=cfm, frame_source=frame_source)


def mask_channels(batch: Batch, cfg: MaskingConfig, generator: torch.Generator) -> Batch:
    """Contiguous Channels Masking (see the module docstring).

    Args:
        batch: Collated batch; `masked_input` is used as the base when already set.
        cfg: Masking parameters.
        generator: Source of all randomness (on the batch's device).

    Returns:
        A new Batch with `masked_input` and `ccm` (B, C) set.
    """
    b, _, c = batch.features.shape
    ccm = _draw_channels(b, c, cfg, generator, batch.valid.device)
    out = _base(batch).clone()
    _apply_channels(out, batch.valid, ccm)
    return dataclasses.replace(batch, masked_input=out, ccm=ccm)


def apply_masking(batch: Batch, cfg: MaskingConfig, generator: torch.Generator) -> Batch:
    """CFM then CCM on one copy of the input. Random replacement frames come from the unmasked
    input, and the CCM band is hidden on every valid frame, replaced ones included.

    Args:
        batch: Collated batch (`features`, `valid`); `masked_input` is the base when set.
        cfg: Masking parameters.
        generator: Source of all randomness (on the batch's device).

    Returns:
        A new Batch with `masked_input`, `cfm`, `ccm` and `frame_source` set.
    """
    masks = draw_masks(batch, cfg, generator)
    return dataclasses.replace(masks, masked_input=_masked(_base(batch), masks))
