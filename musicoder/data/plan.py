"""Each epoch's split of a shard set's samples among ranks and loader workers (DESIGN §7), and
the seeds derived from (seed, epoch, rank, worker, ...). Pure Python and numpy, no torch.

Why the planning is explicit rather than `wds.split_by_node`: collectives hang when ranks take
different numbers of steps, so every rank must yield exactly floor(total / world / batch) batches
per epoch, whatever the shard sizes, however many shards are unreadable. `plan_epoch` (pure,
seeded) gives each (rank, worker) slot its shards and a batch quota; a slot that runs dry re-draws
from its shards (then from all shards) instead of stopping early. With fewer shards than slots,
every slot reads every shard and keeps the samples whose global index falls on its slot.
A mixture (`plan_mixture`) plans each part (shards of one per-sample weight) this way, with one
batch quota per slot from the weighted total; the slot draws among its parts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class WorkerPlan:
    """What one (rank, worker) slot reads in one epoch."""

    shards: tuple[int, ...]  # indices into the manifest's shard list, in read order
    stride: int  # keep samples whose global index % stride == offset (1 = keep all)
    offset: int
    batches: int  # exactly this many batches


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixing all parts (seed, epoch, rank, worker, ...) without collisions."""
    return int(
        np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0]
        >> np.uint64(1)
    )


def plan_epoch(
    samples: Sequence[int],
    *,
    world_size: int,
    num_workers: int,
    batch_size: int,
    seed: int,
    epoch: int,
) -> list[list[WorkerPlan]]:
    """Assign shards to every (rank, worker) slot for one epoch. Pure and seeded.

    Args:
        samples: sample count of each shard, in manifest order.
        world_size: number of ranks.
        num_workers: loader workers per rank (use 1 for in-process loading).
        batch_size: micro batch per rank.
        seed: run seed.
        epoch: epoch number (changes the assignment and read order).

    Returns:
        `plans[rank][worker]`. Every rank's worker quotas sum to
        floor(sum(samples) / world_size / batch_size), identical across ranks.

    Raises:
        ValueError: too few samples for one batch per rank.
    """
    plans = plan_mixture(
        [samples],
        [1.0],
        world_size=world_size,
        num_workers=num_workers,
        batch_size=batch_size,
        seed=seed,
        epoch=epoch,
    )
    return [[parts[0] for parts in rank] for rank in plans]


def plan_mixture(
    parts: Sequence[Sequence[int]],
    weights: Sequence[float],
    *,
    world_size: int,
    num_workers: int,
    batch_size: int,
    seed: int,
    epoch: int,
) -> list[list[tuple[WorkerPlan, ...]]]:
    """Plan an epoch over several parts (groups of shards), each sample of part k drawn
    `weights[k]` times on average. Pure and seeded.

    Each part's shards are assigned to the slots as `plan_epoch` assigns one shard set's (part
    0 with the run seed itself, so a one-part plan is `plan_epoch`'s); a slot's batch quota
    comes from the weighted total, floor(sum_k weights[k] * samples_k / world / batch) per
    rank, and every part's plan of a slot carries it (the slot draws among its parts).

    Args:
        parts: per part, the sample count of each of its shards.
        weights: one per part, > 0.
        world_size, num_workers, batch_size, seed, epoch: as for `plan_epoch`.

    Returns:
        `plans[rank][worker]`: a tuple with one `WorkerPlan` per part.

    Raises:
        ValueError: too few (weighted) samples for one batch per rank.
    """
    total = sum(w * sum(s) for s, w in zip(parts, weights, strict=True))
    # Weighted totals are floats: 0.29 * 100 must count as 29 batches' worth, not 28.999...
    per_rank = math.floor(total / (world_size * batch_size) + 1e-9)
    if per_rank < 1:
        raise ValueError(
            f"{total:g}{' weighted' if any(w != 1 for w in weights) else ''} samples are too few for {world_size} ranks x batch "
            f"{batch_size}; make more shards or lower train.micro_batch"
        )
    quota = [per_rank // num_workers + (w < per_rank % num_workers) for w in range(num_workers)]
    slots = world_size * num_workers
    assigned = [
        _assign(samples, slots, seed if k == 0 else derive_seed(seed, k), epoch)
        for k, samples in enumerate(parts)
    ]
    return [
        [
            tuple(WorkerPlan(*part[r * num_workers + w], batches=quota[w]) for part in assigned)
            for w in range(num_workers)
        ]
        for r in range(world_size)
    ]


def _assign(
    samples: Sequence[int], slots: int, seed: int, epoch: int
) -> list[tuple[tuple[int, ...], int, int]]:
    """Per slot: (shards in read order, stride, offset) of one shard list."""
    rng = np.random.default_rng(derive_seed(seed, epoch))
    order = [int(i) for i in rng.permutation(len(samples))]
    if len(samples) < slots:  # split by sample index inside shards
        return [(tuple(order), slots, slot) for slot in range(slots)]
    # Largest shards first to the least loaded slot; ties keep the seeded order.
    load, owned = [0] * slots, [[] for _ in range(slots)]
    for i in sorted(order, key=lambda i: -samples[i]):
        slot = min(range(slots), key=lambda s: (load[s], len(owned[s]), s))
        load[slot] += samples[i]
        owned[slot].append(i)
    for shard_list in owned:  # read order within a slot is random, not size-sorted
        rng.shuffle(shard_list)
    return [(tuple(shard_list), 1, 0) for shard_list in owned]
