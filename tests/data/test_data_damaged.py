"""Damaged shards in the loader (DESIGN §9): a shard whose bytes changed after the manifest was
written (bytes overwritten inside a sample, or cut at a member boundary, where the tar itself
still reads cleanly) is found by the streamed sha256/size check, named in a warning, reported
in `BatchInfo.damaged` and excluded from then on, locally and on S3; every rank still yields its
batch quota."""

from __future__ import annotations

import logging
import shutil

import pytest
from shard_damage import cut_at_member, overwrite_middle

from musicoder import storage
from musicoder.data.stream import DataConfig, ShardStream, make_loader
from musicoder.model import MaskingConfig
from musicoder.shardset.manifest import read_manifest

BATCH = 3
DAMAGED = "shard-000000.tar"


def _stream(root: str, *, rank=0, world=1, verify=True) -> ShardStream:
    cfg = DataConfig(
        manifest=root, num_workers=0, max_frames=32, shuffle_buffer=8, verify_sha256=verify
    )
    return ShardStream(
        read_manifest(root),
        cfg,
        MaskingConfig(),
        rank=rank,
        world_size=world,
        batch_size=BATCH,
        seed=0,
    )


def _epochs(stream: ShardStream, n: int) -> list[list]:
    out = []
    for epoch in range(n):
        stream.set_epoch(epoch)
        out.append(list(make_loader(stream)))
    return out


@pytest.mark.timeout(120)
@pytest.mark.parametrize("damage", [overwrite_middle, cut_at_member])
def test_damaged_shard_is_named_excluded_and_counts_stay_equal(
    few_shard_set, tmp_path, caplog, damage
):
    root = tmp_path / "set"
    shutil.copytree(few_shard_set, root)
    damage(root / DAMAGED)
    expected = (14 + 9) // BATCH
    # Without the check the damage goes unseen: the tar and its samples still decode.
    caplog.set_level(logging.WARNING, logger="musicoder.data.stream")
    (unchecked,) = _epochs(_stream(str(root), verify=False), 1)
    assert len(unchecked) == expected and unchecked[-1][1].damaged == ()
    assert "shard" not in caplog.text
    stream = _stream(str(root))
    first, second = _epochs(stream, 2)
    assert len(first) == len(second) == expected
    assert first[-1][1].damaged == (0,) and second[-1][1].damaged == (0,)
    warnings = [r.getMessage() for r in caplog.records if "damaged shard" in r.getMessage()]
    assert len(warnings) == 1, warnings  # excluded after the first epoch: never read again
    assert str(root / DAMAGED) in warnings[0]
    assert ("sha256" if damage is overwrite_middle else "bytes") in warnings[0]


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_damaged_shard_on_s3_on_two_ranks(few_shard_set, tmp_path, s3_env, caplog):
    local = tmp_path / "set"
    shutil.copytree(few_shard_set, local)
    overwrite_middle(local / DAMAGED)
    for path in local.iterdir():
        storage.write_file(storage.join(s3_env, f"set/{path.name}"), path)
    root = storage.join(s3_env, "set")
    damaged = []
    for rank in range(2):
        (batches,) = _epochs(_stream(root, rank=rank, world=2), 1)
        assert len(batches) == (14 + 9) // (2 * BATCH)
        damaged.append(batches[-1][1].damaged)
    assert (0,) in damaged  # fewer shards than slots: both ranks read it, at least one to its end
    assert storage.join(root, DAMAGED) in caplog.text
