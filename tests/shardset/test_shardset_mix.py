"""`mix_manifests` and `merge_stats` (musicoder/shardset/manifest.py): normalization statistics
of a weighted mixture equal numpy's over the concatenated data, weights compose through views,
and shards carry their composed weight and source."""

from __future__ import annotations

import numpy as np
import pytest

from musicoder.shardset.format import ShardFormatError
from musicoder.shardset.manifest import Manifest, NormStats, ShardRef, mix_manifests

C = 7


def _shard_set(name: str, frames: np.ndarray, preset: str = "musicoder324") -> Manifest:
    """An in-memory manifest whose stats are those of `frames` (N, C), as the sharder stores
    them (population std)."""
    stats = NormStats(mean=frames.mean(0), std=frames.std(0), count=len(frames))
    return Manifest(
        uri=f"/data/{name}/manifest.json",
        preset=preset,
        feature={},
        channels=frames.shape[1],
        train=[ShardRef(f"/data/{name}/shard-000000.tar", 5)],
        val=[ShardRef(f"/data/{name}/val-000000.tar", 1)],
        stats=stats,
        counts={},
    )


@pytest.fixture
def frames() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    # Different sizes, means and spreads per source, so any wrong pooling shows.
    return [
        rng.normal(loc, scale, size=(n, C))
        for n, loc, scale in ((300, 5.0, 1.0), (120, -2.0, 3.0), (50, 0.5, 0.2))
    ]


def test_integer_weights_give_the_stats_of_the_repeated_concatenation(frames):
    a, b, _ = frames
    mixed = mix_manifests("m", [_shard_set("a", a), _shard_set("b", b)], [2.0, 1.0])
    union = np.concatenate([a, a, b])
    np.testing.assert_allclose(mixed.stats.mean, union.mean(0), rtol=1e-12)
    np.testing.assert_allclose(mixed.stats.std, union.std(0), rtol=1e-10)
    assert mixed.stats.mean.dtype == np.float64 and mixed.stats.std.dtype == np.float64
    # Averaging the stds (a tempting shortcut) is far from it.
    naive = (2 * len(a) * a.std(0) + len(b) * b.std(0)) / (2 * len(a) + len(b))
    assert not np.allclose(naive, union.std(0), rtol=0.05)


def test_weights_compose_through_a_view(frames):
    a, b, c = frames
    view = mix_manifests("v", [_shard_set("a", a), _shard_set("b", b)], [1.0, 3.0])
    mixed = mix_manifests("m", [view, _shard_set("c", c)], [0.5, 1.0])
    # Leaf weights 0.5 (a), 1.5 (b), 1.0 (c): numpy's weighted moments over every frame.
    data = np.concatenate(frames)
    rows = np.concatenate([np.full(len(a), 0.5), np.full(len(b), 1.5), np.full(len(c), 1.0)])
    mean = np.average(data, axis=0, weights=rows)
    std = np.sqrt(np.average((data - mean) ** 2, axis=0, weights=rows))
    np.testing.assert_allclose(mixed.stats.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(mixed.stats.std, std, rtol=1e-10)
    assert [(r.weight, r.source) for r in mixed.train] == [(0.5, 0), (1.5, 0), (1.0, 1)]
    assert [r.weight for r in mixed.val] == [0.5, 1.5, 1.0]
    assert mixed.weights == [0.5, 1.0] and mixed.counts["segments"] == 18


def test_mixing_refuses_other_presets_and_bad_weights(frames):
    a, b, _ = frames
    mel = _shard_set("mel", b[:, :5], preset="logmel128")
    with pytest.raises(ShardFormatError, match=r"m: source /data/mel/manifest.json uses preset"):
        mix_manifests("m", [_shard_set("a", a), mel], [1.0, 1.0])
    with pytest.raises(ShardFormatError, match="has weight 0.0, need > 0"):
        mix_manifests("m", [_shard_set("a", a)], [0.0])
