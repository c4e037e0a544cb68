"""Tests for musicoder/data/mixture.py and the loader over mixtures: weights honoured,
seeded determinism, exact mid-epoch resume, equal batches per rank, per-source counts, the
`data.sources` config and its one-line errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from fixtures_training import sample_ids, write_shard_set, write_view

from musicoder.config import ConfigError, load_config
from musicoder.data.mixture import (
    SourceConfig,
    expected_shares,
    interleave,
    read_data,
    source_names,
)
from musicoder.data.plan import plan_mixture
from musicoder.data.stream import DataConfig, DataPosition, ShardStream, make_loader
from musicoder.model import MaskingConfig
from musicoder.shardset.format import ShardFormatError
from musicoder.training.config import PretrainConfig

BATCH, WORLD = 3, 2


def _origins(*roots) -> dict[bytes, int]:
    """First feature row (bytes of float32) -> index of the shard set it is in."""
    return {row: n for n, root in enumerate(roots) for row in sample_ids(root)}


def _config(*sources: tuple, workers: int = 0) -> DataConfig:
    return DataConfig(
        sources=[SourceConfig(uri=str(root), weight=w) for root, w in sources],
        num_workers=workers,
        max_frames=64,  # longer than every clip of these sets: no crop, rows identify clips
        shuffle_buffer=8,
        normalize=False,
    )


def _stream(cfg: DataConfig, *, rank: int = 0, world: int = WORLD, seed: int = 4) -> ShardStream:
    return ShardStream(
        read_data(cfg),
        cfg,
        MaskingConfig(),
        rank=rank,
        world_size=world,
        batch_size=BATCH,
        seed=seed,
    )


def test_interleave_honours_weights_on_a_large_draw_and_is_seeded():
    masses = [1.0, 2.0, 7.0]

    def draw(seed: int, n: int = 200_000) -> np.ndarray:
        streams = [itertools.repeat(k) for k in range(3)]
        items = interleave(streams, masses, np.random.default_rng(seed))
        return np.fromiter(itertools.islice(items, n), dtype=np.int64)

    a = draw(1)
    np.testing.assert_allclose(np.bincount(a) / len(a), [0.1, 0.2, 0.7], atol=0.004)
    assert np.array_equal(a, draw(1)) and not np.array_equal(a[:100], draw(2)[:100])
    assert np.array_equal(draw(1, 5000), a[:5000])  # a prefix: skipping replays it exactly


@pytest.mark.parametrize("seed", range(4))
def test_mixture_plan_gives_every_rank_the_same_weighted_quota(seed):
    parts, weights = [[11, 3, 7, 1], [5], [4, 4, 4]], [0.5, 3.0, 1.0]
    for world, workers in [(1, 1), (2, 2), (3, 2)]:
        plans = plan_mixture(
            parts,
            weights,
            world_size=world,
            num_workers=workers,
            batch_size=BATCH,
            seed=seed,
            epoch=seed,
        )
        total = 0.5 * 22 + 3.0 * 5 + 12
        assert [sum(slot[0].batches for slot in rank) for rank in plans] == [
            int(total // (world * BATCH))
        ] * world
        for rank in plans:
            for slot in rank:
                assert len(slot) == 3 and len({p.batches for p in slot}) == 1


@pytest.mark.timeout(120)
def test_mixture_stream_draws_by_weight_balances_ranks_and_resumes(uneven_shard_set, few_shard_set):
    cfg = _config((uneven_shard_set, 1.0), (few_shard_set, 3.0))
    manifest = read_data(cfg)
    assert expected_shares(manifest) == pytest.approx([42 / 111, 69 / 111])
    origins = _origins(uneven_shard_set, few_shard_set)
    drawn = np.zeros(2)
    for rank in range(WORLD):
        stream = _stream(cfg, rank=rank)
        assert stream.batches_per_epoch == 111 // (WORLD * BATCH)
        for epoch in range(3):
            stream.set_epoch(epoch)
            batches = list(stream)
            assert len(batches) == stream.batches_per_epoch
            for batch, info in batches:
                found = np.bincount(
                    [origins[batch.features[i, 0].numpy().tobytes()] for i in range(BATCH)],
                    minlength=2,
                )
                assert tuple(found) == info.sources  # counted per source, truthfully
                drawn += found
    # 6 epoch-rank streams x 18 batches x 3 = 324 draws: the expected 37.8% / 62.2%
    np.testing.assert_allclose(drawn / drawn.sum(), [42 / 111, 69 / 111], atol=0.08)
    # A different seed draws another sequence; the same seed the same one.
    a, b, c = (list(_stream(cfg, seed=s))[:4] for s in (4, 4, 5))
    assert all(torch.equal(x.features, y.features) for (x, _), (y, _) in zip(a, b, strict=True))
    assert any(
        x.features.shape != z.features.shape or not torch.equal(x.features, z.features)
        for (x, _), (z, _) in zip(a, c)
    )


@pytest.mark.timeout(120)
def test_mixture_resumes_mid_epoch_exactly_with_loader_workers(uneven_shard_set, few_shard_set):
    cfg = _config((uneven_shard_set, 0.5), (few_shard_set, 2.0), workers=2)
    stream = _stream(cfg, rank=1)
    stream.set_epoch(2)
    full = list(make_loader(stream))
    consumed = [0, 0]
    for _, info in full[:5]:
        consumed[info.worker] = info.consumed
    resumed = _stream(cfg, rank=1)
    resumed.set_position(DataPosition(2, consumed, WORLD, 2, BATCH))
    rest = list(make_loader(resumed))
    assert len(rest) == len(full) - 5
    for (x, i), (y, j) in zip(full[5:], rest, strict=True):
        assert torch.equal(x.features, y.features) and torch.equal(x.cfm, y.cfm)
        assert i.sources == j.sources


def test_equal_weights_and_one_source_read_as_before(uneven_shard_set, few_shard_set, tmp_path):
    """Weights of 1 are the union: the same batches as a view over both sets."""
    write_view(tmp_path / "view.json", [(uneven_shard_set, {}), (few_shard_set, {})])
    view_cfg = DataConfig(
        manifest=str(tmp_path / "view.json"),
        num_workers=0,
        max_frames=64,
        shuffle_buffer=8,
        normalize=False,
    )
    mixed = list(_stream(_config((uneven_shard_set, 1.0), (few_shard_set, 1.0))))
    viewed = list(_stream(view_cfg))
    assert len(mixed) == len(viewed)
    for (x, i), (y, j) in zip(mixed, viewed, strict=True):
        assert torch.equal(x.features, y.features) and i.sources == j.sources


def test_a_view_in_a_mixture_composes_weights(uneven_shard_set, few_shard_set, tmp_path):
    write_view(tmp_path / "v" / "view.json", [(uneven_shard_set, {})])
    cfg = _config((tmp_path / "v", 2.0), (few_shard_set, 1.0))
    manifest = read_data(cfg)
    assert {r.weight for r in manifest.train if r.source == 0} == {2.0}
    assert expected_shares(manifest) == pytest.approx([84 / 107, 23 / 107])
    assert source_names(cfg, manifest) == ["v", few_shard_set.name]


def test_sources_config_from_set_and_its_errors(uneven_shard_set, tmp_path, monkeypatch):
    cfg = load_config(
        PretrainConfig,
        overrides=[f"data.sources=[{{uri: {uneven_shard_set}, weight: 2}}, {{uri: b, name: x}}]"],
    )
    assert [(s.uri, s.weight, s.name) for s in cfg.data.sources] == [
        (str(uneven_shard_set), 2.0, ""),
        ("b", 1.0, "x"),
    ]
    assert cfg.data.manifest == ""
    yaml = tmp_path / "mix.yaml"
    yaml.write_text("data:\n  sources:\n    - {uri: a, weight: 0.5}\n    - uri: b\n      name: y\n")
    from_file = load_config(PretrainConfig, [str(yaml)]).data.sources
    assert [(s.uri, s.weight, s.name) for s in from_file] == [("a", 0.5, ""), ("b", 1.0, "y")]
    monkeypatch.chdir(tmp_path)  # neither set: the default shard set, shards/
    with pytest.raises(FileNotFoundError, match="shards/manifest.json: no manifest"):
        read_data(DataConfig())
    with pytest.raises(ConfigError, match="data.manifest .* and data.sources are both set"):
        load_config(PretrainConfig, overrides=["data.manifest=a", "data.sources=[{uri: b}]"])
    with pytest.raises(ConfigError, match="weight -1.0, need > 0"):
        load_config(PretrainConfig, overrides=["data.sources=[{uri: b, weight: -1}]"])
    with pytest.raises(ConfigError, match="names must differ"):
        load_config(
            PretrainConfig, overrides=["data.sources=[{uri: a, name: x}, {uri: b, name: x}]"]
        )
    mel = write_shard_set(tmp_path / "mel", [4], frames=(20, 30), seed=7, preset="logmel128")
    with pytest.raises(ShardFormatError) as info:
        read_data(_config((uneven_shard_set, 1.0), (mel, 1.0)))
    message = str(info.value)
    assert "\n" not in message and str(mel / "manifest.json") in message
    assert "all sources must share one feature preset" in message
