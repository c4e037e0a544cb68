"""The loader over a view (DESIGN §13): excluded samples never reach a batch, every rank gets
the same number of batches, and a mid-epoch resume continues exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fixtures_training import sample_ids, write_view

from musicoder.data.stream import DataConfig, DataPosition, ShardStream
from musicoder.model import MaskingConfig
from musicoder.shardset.manifest import read_manifest

BATCH, WORLD = 3, 2


def _stream(uri: str, rank: int) -> ShardStream:
    cfg = DataConfig(manifest=uri, num_workers=0, max_frames=64, normalize=False)
    return ShardStream(
        read_manifest(uri),
        cfg,
        MaskingConfig(),
        rank=rank,
        world_size=WORLD,
        batch_size=BATCH,
        seed=3,
    )


@pytest.mark.timeout(120)
def test_stream_over_view_skips_excluded_keys_and_resumes(uneven_shard_set, tmp_path):
    keys = json.loads((uneven_shard_set / "shard-000000.json").read_text())["keys"]
    keys += json.loads((uneven_shard_set / "shard-000004.json").read_text())["keys"]
    excluded = set(keys[::2])
    by_shard = {
        "shard-000000.tar": [k for k in keys[:11] if k in excluded],
        "shard-000004.tar": [k for k in keys[11:] if k in excluded],
    }
    write_view(tmp_path / "view.json", [(uneven_shard_set, by_shard)])
    uri = str(tmp_path / "view.json")
    ids = sample_ids(uneven_shard_set)
    kept_total = 42 - len(excluded)
    per_rank = []
    for rank in range(WORLD):
        stream = _stream(uri, rank)
        stream.set_epoch(1)
        batches = list(stream)
        per_rank.append(len(batches))
        seen = [
            ids[batch.features[i, 0].numpy().tobytes()]
            for batch, _ in batches
            for i in range(BATCH)
        ]
        assert not excluded & set(seen)
        # Resume after two batches: the rest of the epoch, batch for batch.
        resumed = _stream(uri, rank)
        resumed.set_position(DataPosition(1, [2 * BATCH], WORLD, 1, BATCH))
        rest = list(resumed)
        assert len(rest) == len(batches) - 2
        for (want, _), (got, _) in zip(batches[2:], rest, strict=True):
            assert np.array_equal(want.features.numpy(), got.features.numpy())
    assert per_rank == [kept_total // (WORLD * BATCH)] * WORLD
