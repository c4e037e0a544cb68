"""Tests for musicoder/model/masking.py through its two entry points (`draw_masks` in the
loader, `model_input` on the device): CFM/CCM statistics over many draws, padding, seeding."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy import stats

from musicoder.model import Batch, MaskingConfig, draw_masks, model_input

P_MIN = 1e-3  # chi-square tests fail below this p-value
CFM_ONLY = MaskingConfig(enable_ccm=False)
CCM_ONLY = MaskingConfig(enable_cfm=False)


def masked(batch: Batch, cfg: MaskingConfig, generator: torch.Generator) -> Batch:
    """What the trainer sees: masks drawn as in a loader worker, the input built from them."""
    drawn = draw_masks(batch, cfg, generator)
    return dataclasses.replace(drawn, masked_input=model_input(drawn))


def clamped_geometric_mean(p: float = 0.2, lo: int = 2, hi: int = 7) -> float:
    """E[clamp(L, lo, hi)] for L ~ Geometric(p) on {1, 2, ...}."""
    pmf = {k: (1 - p) ** (k - 1) * p for k in range(1, hi)}
    return sum(max(k, lo) * q for k, q in pmf.items()) + hi * (1 - sum(pmf.values()))


def make_batch(lengths: list[int], t: int, c: int = 8, seed: int = 0) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(len(lengths), t, c, generator=gen)
    valid = torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]
    return Batch(features=features, valid=valid)


def runs(row: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of each run of True in a 1-D bool array."""
    edges = np.diff(np.concatenate([[0], row.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True))


@pytest.fixture(scope="module")
def long_clip_draws() -> list[tuple[Batch, Batch]]:
    """CFM on long clips (so clip ends barely matter), several seeds."""
    batch = make_batch([1000] * 48, t=1000)
    return [(batch, masked(batch, CFM_ONLY, torch.Generator().manual_seed(s))) for s in range(4)]


def test_expected_span_mean_is_the_design_value():
    assert clamped_geometric_mean() == pytest.approx(4.15, abs=0.005)


def test_cfm_fraction_per_clip_and_overall(long_clip_draws):
    fractions = torch.cat([m.cfm.float().mean(dim=1) for _, m in long_clip_draws])
    assert abs(fractions.mean().item() - 0.15) < 0.02
    assert (fractions - 0.15).abs().max().item() < 0.02  # per clip, not only on average


def test_cfm_span_lengths(long_clip_draws):
    lengths = [e - s for _, m in long_clip_draws for row in m.cfm.numpy() for s, e in runs(row)]
    assert min(lengths) >= 2 and max(lengths) <= 7
    # Spans never touch, so each visible run is exactly one span.
    assert abs(np.mean(lengths) / clamped_geometric_mean() - 1) < 0.05
    assert abs(np.mean(lengths) - 4.15) < 0.05 * 4.15


def test_cfm_80_10_10_split(long_clip_draws):
    kinds = {"zero": 0, "random": 0, "keep": 0}
    for batch, drawn in long_clip_draws:
        for i, row in enumerate(drawn.cfm.numpy()):
            for s, e in runs(row):
                got, orig = drawn.masked_input[i, s:e], batch.features[i, s:e]
                if torch.equal(got, torch.zeros_like(got)):
                    kinds["zero"] += 1
                elif torch.equal(got, orig):
                    kinds["keep"] += 1
                else:
                    # Every replaced frame is a frame of the same clip.
                    match = (got[:, None, :] == batch.features[i][None, :, :]).all(-1).any(-1)
                    assert match.all()
                    kinds["random"] += 1
    total = sum(kinds.values())
    assert total > 5000
    assert abs(kinds["zero"] / total - 0.8) < 0.03
    assert abs(kinds["random"] / total - 0.1) < 0.03
    assert abs(kinds["keep"] / total - 0.1) < 0.03


def test_cfm_leaves_unmasked_frames_alone(long_clip_draws):
    batch, drawn = long_clip_draws[0]
    keep = ~drawn.cfm
    assert torch.equal(drawn.masked_input[keep], batch.features[keep])
    assert not drawn.ccm.any()


def test_ccm_width_and_start_are_uniform():
    lo, hi, max_width = 52, 324, 54  # DESIGN §6: mel + CQT, W = round(0.2 * 272)
    batch = make_batch([1] * 20000, t=1, c=324)
    ccm = draw_masks(batch, CCM_ONLY, torch.Generator().manual_seed(3)).ccm.numpy()
    width = ccm.sum(axis=1)
    start = np.where(width > 0, ccm.argmax(axis=1), -1)
    nonzero = width > 0
    # Contiguous, inside [lo, hi).
    last = np.maximum(start + width - 1, 0)
    assert np.all(ccm.cumsum(axis=1)[np.arange(len(ccm)), last] == width)
    assert start[nonzero].min() >= lo and (start + width)[nonzero].max() <= hi
    observed = np.bincount(width, minlength=max_width + 1)
    assert len(observed) == max_width + 1
    assert stats.chisquare(observed).pvalue > P_MIN
    # Start given width: 10 relative-position bins per width, exact expected probabilities.
    bins = 10
    obs = np.zeros((max_width + 1, bins))
    exp = np.zeros_like(obs)
    for w in range(1, max_width + 1):
        starts = start[width == w] - lo
        positions = hi - lo - w + 1
        obs[w] = np.bincount(starts * bins // positions, minlength=bins)
        exp[w] = np.bincount(np.arange(positions) * bins // positions, minlength=bins) / positions
        exp[w] *= len(starts)
    assert stats.chisquare(obs[1:].ravel(), exp[1:].ravel()).pvalue > P_MIN


def test_ccm_zeroes_band_on_valid_frames_only():
    batch = make_batch([50, 20, 0], t=50, c=324)
    out = masked(batch, CCM_ONLY, torch.Generator().manual_seed(0))
    for i in range(3):
        band, valid = out.ccm[i], batch.valid[i]
        assert torch.all(out.masked_input[i][valid][:, band] == 0)
        got, want = out.masked_input[i][valid], batch.features[i][valid]
        assert torch.equal(got[:, ~band], want[:, ~band])
        assert torch.equal(out.masked_input[i][~valid], batch.features[i][~valid])


def test_ccm_range_falls_back_to_all_channels_for_smaller_inputs():
    batch = make_batch([30] * 500, t=30, c=128)
    ccm = draw_masks(batch, CCM_ONLY, torch.Generator().manual_seed(0)).ccm
    assert ccm.sum(dim=1).max().item() == 26  # round(0.2 * 128) over all 128 channels
    assert ccm[:, 0].any() and ccm[:, 127].any()
    narrow = dataclasses.replace(CCM_ONLY, ccm_lo=0, ccm_hi=64, ccm_max_width=10)
    ccm = draw_masks(batch, narrow, torch.Generator().manual_seed(0)).ccm
    assert ccm.sum(dim=1).max().item() == 10 and not ccm[:, 64:].any()


def test_padding_is_never_masked():
    valid = torch.zeros(6, 40, dtype=torch.bool)
    valid[0] = True
    valid[1, :25] = True
    valid[2, :3] = True
    valid[3, 5:35:2] = True  # non-prefix: holes inside the clip
    valid[4, 10:] = True
    # valid[5]: no frame at all
    features = torch.randn(6, 40, 16)
    batch = Batch(features=features, valid=valid)
    for seed in range(50):
        out = masked(
            batch,
            MaskingConfig(cfm_fraction=0.4, ccm_lo=0, ccm_hi=16),
            torch.Generator().manual_seed(seed),
        )
        assert not (out.cfm & ~valid).any()
        assert torch.equal(out.masked_input[~valid], features[~valid])
        # Replacement frames come only from valid frames of the same clip.
        assert torch.isfinite(out.masked_input).all()
    assert out.cfm[0].any() and out.cfm[3].any() and not out.cfm[5].any()


def test_masking_is_pure_and_seeded():
    batch = make_batch([64, 40, 10], t=64, c=324)
    before = batch.features.clone(), batch.valid.clone()
    cfg = MaskingConfig()
    first = masked(batch, cfg, torch.Generator().manual_seed(7))
    again = masked(batch, cfg, torch.Generator().manual_seed(7))
    other = masked(batch, cfg, torch.Generator().manual_seed(8))
    assert torch.equal(batch.features, before[0]) and torch.equal(batch.valid, before[1])
    assert batch.masked_input is None and batch.cfm is None and batch.ccm is None
    for name in ("masked_input", "cfm", "ccm"):
        assert torch.equal(getattr(first, name), getattr(again, name))
    assert not torch.equal(first.cfm, other.cfm)
    assert not torch.equal(first.ccm, other.ccm)
    # The global RNG is not used: its state is unchanged by masking.
    state = torch.random.get_rng_state()
    masked(batch, cfg, torch.Generator().manual_seed(7))
    assert torch.equal(state, torch.random.get_rng_state())


def test_disabled_parts_and_empty_batches():
    batch = make_batch([20, 0], t=20, c=324)
    off = MaskingConfig(enable_cfm=False, enable_ccm=False)
    drawn = draw_masks(batch, off, torch.Generator().manual_seed(0))
    assert not drawn.cfm.any() and not drawn.ccm.any()
    assert torch.equal(model_input(drawn), batch.features)
    empty = draw_masks(make_batch([], t=5, c=324), MaskingConfig(), torch.Generator())
    assert empty.cfm.shape == (0, 5) and empty.ccm.shape == (0, 324)


def test_short_clips_stay_within_their_frames():
    batch = make_batch([1, 2, 4, 7, 13], t=13)
    for seed in range(200):
        cfm = draw_masks(batch, MaskingConfig(), torch.Generator().manual_seed(seed)).cfm
        assert not (cfm & ~batch.valid).any()
        assert cfm[4].sum() <= 7


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"cfm_fraction": 1.0}, "cfm_fraction"),
        ({"span_min": 3, "span_max": 2}, "span_max"),
        ({"zero_prob": 0.95}, "random_prob"),
        ({"ccm_lo": 10, "ccm_hi": 10}, "ccm_hi"),
        ({"ccm_max_width": 300}, "ccm_max_width"),
        ({"span_p": 0.0}, "span_p"),
    ],
)
def test_invalid_masking_config_is_rejected(kwargs, key):
    with pytest.raises(ValueError, match=f"^masking.{key}: invalid value"):
        MaskingConfig(**kwargs)


def _odd_valid() -> torch.Tensor:
    valid = torch.zeros(5, 40, dtype=torch.bool)
    valid[0] = True
    valid[1, :25] = True
    valid[2, 5:35:2] = True  # non-prefix
    valid[3, :3] = True
    return valid  # valid[4]: no frame


@pytest.mark.parametrize("seed", range(6))
def test_model_input_applies_the_drawn_masks(seed):
    valid = _odd_valid()
    features = torch.randn(5, 40, 16, generator=torch.Generator().manual_seed(seed))
    batch = Batch(features=features, valid=valid)
    cfg = MaskingConfig(cfm_fraction=0.4, ccm_lo=0, ccm_hi=16)
    drawn = draw_masks(batch, cfg, torch.Generator().manual_seed(seed))
    assert drawn.masked_input is None and batch.frame_source is None
    built = model_input(drawn)
    time = torch.arange(40).expand(5, 40)
    source = drawn.frame_source.clamp(min=0)
    expected = torch.gather(features, 1, source[..., None].expand(-1, -1, 16)).clone()
    expected[drawn.frame_source < 0] = 0  # zeroed CFM frames
    expected[(valid[:, :, None] & drawn.ccm[:, None, :])] = 0  # the CCM band on valid frames
    expected[~valid] = features[~valid]
    assert torch.equal(built, expected)
    assert torch.equal(drawn.frame_source[~drawn.cfm], time[~drawn.cfm])
    half = model_input(drawn, torch.bfloat16)
    assert half.dtype == torch.bfloat16 and torch.equal(half, built.bfloat16())
    with_input = dataclasses.replace(drawn, masked_input=built)
    assert model_input(with_input) is built
    assert model_input(batch) is batch.features


def test_frame_sources_follow_the_cfm_spans():
    valid = _odd_valid().repeat(20, 1)
    batch = Batch(features=torch.randn(100, 40, 4), valid=valid)
    drawn = draw_masks(batch, MaskingConfig(cfm_fraction=0.4), torch.Generator().manual_seed(3))
    source, cfm = drawn.frame_source, drawn.cfm
    time = torch.arange(40).expand(100, 40)
    assert torch.equal(source[~cfm], time[~cfm])  # unmasked frames show themselves
    replaced = cfm & (source >= 0) & (source != time)
    zeroed, kept = cfm & (source < 0), cfm & (source == time)
    assert zeroed.any() and replaced.any() and kept.any()
    rows = torch.arange(100)[:, None].expand(100, 40)
    assert valid[rows[replaced], source[replaced]].all()  # a real frame of the same clip
    # 80/10/10 over frames (spans are ~4 frames, so this is loose)
    share = torch.stack([zeroed.sum(), replaced.sum() + kept.sum()]).float() / cfm.sum()
    assert 0.7 < share[0] < 0.9


def test_batch_checks_frame_source():
    features, valid = torch.zeros(2, 3, 4), torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="frame_source"):
        Batch(features=features, valid=valid, frame_source=torch.zeros(2, 3, dtype=torch.int32))
    with pytest.raises(ValueError, match="frame_source"):
        Batch(features=features, valid=valid, frame_source=torch.zeros(2, 4, dtype=torch.long))
    moved = Batch(features, valid, frame_source=torch.zeros(2, 3, dtype=torch.long)).to(
        "cpu", torch.bfloat16
    )
    assert moved.frame_source.dtype == torch.long and moved.features.dtype == torch.bfloat16


@pytest.mark.parametrize("holes", [False, True])
def test_cfm_span_placement_is_uniform(holes):
    # Spans of exactly 2 and budget 4 of 10 valid frames: always 2 spans, placed among the
    # C(7, 2) = 21 arrangements that keep a free frame between them, all equally likely.
    clips, t = 21 * 400, 20 if holes else 10
    valid = torch.zeros(clips, t, dtype=torch.bool)
    valid[:, slice(1, None, 2) if holes else slice(0, 10)] = True  # holes: odd frames only
    batch = Batch(features=torch.zeros(clips, t, 1), valid=valid)
    cfg = MaskingConfig(cfm_fraction=0.4, span_min=2, span_max=2, enable_ccm=False)
    cfm = draw_masks(batch, cfg, torch.Generator().manual_seed(5)).cfm
    assert not (cfm & ~valid).any()
    pattern = cfm[valid].reshape(clips, 10).numpy()
    starts = [tuple(s for s, _ in runs(row)) for row in pattern]
    assert all(len(s) == 2 and s[1] - s[0] >= 3 for s in starts)  # 2 spans, never touching
    _, counts = np.unique(starts, axis=0, return_counts=True)
    assert len(counts) == 21
    assert stats.chisquare(counts).pvalue > P_MIN


def test_cfm_dense_spans_take_the_only_arrangement():
    # 3 spans of 2 in 8 frames fit only as 11.11.11; each clip must find all 3 free positions,
    # which often takes more draws than the first round gives.
    batch = make_batch([8] * 200, t=8)
    cfg = MaskingConfig(cfm_fraction=0.75, span_min=2, span_max=2)
    for seed in range(5):
        cfm = draw_masks(batch, cfg, torch.Generator().manual_seed(seed)).cfm
        assert torch.equal(cfm, torch.tensor([[1, 1, 0, 1, 1, 0, 1, 1]] * 200, dtype=torch.bool))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_masks_on_cuda_are_drawn_there():
    batch = make_batch([64, 40, 10], t=64, c=324).to("cuda")
    cfg = MaskingConfig()
    drawn = draw_masks(batch, cfg, torch.Generator("cuda").manual_seed(7))
    again = draw_masks(batch, cfg, torch.Generator("cuda").manual_seed(7))
    for name in ("cfm", "ccm", "frame_source"):
        assert getattr(drawn, name).device.type == "cuda"
        assert torch.equal(getattr(drawn, name), getattr(again, name))
    assert model_input(drawn).device.type == "cuda"
