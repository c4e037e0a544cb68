"""Tests for musicoder/data/plan.py: planning invariants over many seeds and shapes."""

from __future__ import annotations


import pytest

from musicoder.data.plan import plan_epoch

BATCH = 3


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("sizes", [[11, 3, 7, 1, 9, 5, 6], [14, 9], [5], [4] * 13])
def test_plan_gives_every_rank_the_same_quota(sizes, seed):
    for world, workers in [(1, 1), (2, 2), (3, 2), (4, 3)]:
        if sum(sizes) < world * BATCH:
            continue
        plans = plan_epoch(
            sizes, world_size=world, num_workers=workers, batch_size=BATCH, seed=seed, epoch=seed
        )
        quotas = [sum(p.batches for p in rank) for rank in plans]
        assert quotas == [sum(sizes) // (world * BATCH)] * world
        slots = [p for rank in plans for p in rank]
        if len(sizes) >= world * workers:  # disjoint shards covering the whole set
            owned = sorted(i for p in slots for i in p.shards)
            assert owned == list(range(len(sizes)))
        else:  # every slot reads all shards, and the sample-index offsets are distinct
            assert {p.offset for p in slots} == set(range(world * workers))
            assert all(sorted(p.shards) == list(range(len(sizes))) for p in slots)


def test_plan_refuses_too_little_data():
    with pytest.raises(ValueError, match="too few"):
        plan_epoch([2], world_size=2, num_workers=1, batch_size=2, seed=0, epoch=0)
