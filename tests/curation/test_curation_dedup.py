"""Tests for musicoder/curation/dedup.py: LSH bucket pairs and the two-pass, spilled matching
(synthetic Chromaprint-like fingerprints; tests/curation/test_curation_job.py has real audio)."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest

from musicoder.curation.config import MatchConfig
from musicoder.curation.dedup import (
    PAIR,
    RECORD,
    Deduper,
    bucket_pairs,
    exact_groups,
    merge_groups,
)
from musicoder.curation.fingerprint import OFFSET_SLACK, best_rates, informative

FRAMES = 221  # a 30 s segment


def _sorted_records(rng: np.random.Generator, n: int, keys: int) -> np.ndarray:
    records = np.zeros(n, RECORD)
    records["key"] = rng.integers(0, keys, n)
    records["sample"] = rng.permutation(n)
    records["frame"] = rng.integers(0, FRAMES, n)
    return records[np.lexsort((records["sample"], records["key"]))]


def _reference(records: np.ndarray, window: int) -> set[tuple[int, int, int]]:
    """Brute force: every pair in a bucket whose members are at most `window` apart."""
    found = set()
    for _, run in itertools.groupby(records.tolist(), key=lambda r: r[0]):
        run = list(run)
        for x, y in itertools.combinations(range(len(run)), 2):
            if y - x <= window:
                found.add((run[x][1], run[y][1], run[x][2] - run[y][2]))
    return found


@pytest.mark.parametrize("window", [1, 3, 64])
def test_bucket_pairs_equal_the_brute_force_pairs_within_the_window(window):
    records = _sorted_records(np.random.default_rng(window), 3000, keys=400)
    pairs = bucket_pairs(records, window)
    assert pairs.dtype == PAIR
    got = {(int(p >> 32), int(p & 0xFFFFFFFF), int(o)) for p, o in pairs.tolist()}
    assert len(got) == len(pairs)
    assert got == _reference(records, window) and len(got) > 1000
    assert all(i < j for i, j, _ in got)


def test_bucket_pairs_of_distinct_keys_are_empty():
    records = _sorted_records(np.random.default_rng(0), 50, keys=2**60)
    assert len(bucket_pairs(records, 64)) == 0
    assert len(bucket_pairs(records[:0], 64)) == 0


def _flip(values: np.ndarray, rng: np.random.Generator, share: float) -> np.ndarray:
    flips = rng.random((len(values), 32)) < share
    mask = (flips * (1 << np.arange(32, dtype=np.uint64))).sum(1).astype(np.uint32)
    return values ^ mask


def test_deduper_finds_planted_near_copies_once_and_cleans_its_spill_files(tmp_path):
    rng = np.random.default_rng(0)
    originals = [rng.integers(0, 2**32, FRAMES, dtype=np.uint32) for _ in range(300)]
    deduper = Deduper(MatchConfig(partitions=4), str(tmp_path))
    for k, values in enumerate(originals):
        deduper.add(values, source=k)
    planted = set()
    for k in range(0, 300, 10):  # 30 copies: trimmed by 0-40 frames, 3% of bits flipped
        shift = int(rng.integers(0, 40))
        deduper.add(_flip(originals[k][shift:], rng, 0.03), source=300 + k)
        planted.add((k, len(deduper.usable) - 1))
    deduper.add(originals[5].copy(), source=5)  # same source as sample 5: never a pair
    found = list(deduper.matches())
    assert len(found) == len(set(found))  # each pair once, though it shares several bands
    assert set(found) == planted
    assert deduper.verified == len(found) <= deduper.candidates
    left = sorted(os.listdir(tmp_path))
    assert left == ["fingerprints.u32"]  # partition files are read once and removed


def _bit_error(a: np.ndarray, b: np.ndarray, offset: int) -> tuple[float, int]:
    """Reference, one pair: bit error rate of `a[t]` against `b[t - offset]` over the
    overlap's frames informative in both, and how many frames that is."""
    start, stop = max(0, offset), min(len(a), len(b) + offset)
    if stop <= start:
        return 1.0, 0
    x, y = a[start:stop], b[start - offset : stop - offset]
    keep = informative(a)[start:stop] & informative(b)[start - offset : stop - offset]
    n = int(keep.sum())
    if not n:
        return 1.0, 0
    return float(np.bitwise_count(x[keep] ^ y[keep]).sum()) / (32.0 * n), n


def _best_alignment(a: np.ndarray, b: np.ndarray, offset: int, min_frames: int) -> float:
    """Reference, one pair: the lowest rate within OFFSET_SLACK frames of `offset`."""
    best = 1.0
    for d in range(offset - OFFSET_SLACK, offset + OFFSET_SLACK + 1):
        rate, n = _bit_error(a, b, d)
        if n >= min_frames and rate < best:
            best = rate
    return best


def test_best_rates_equal_a_per_pair_loop():
    rng = np.random.default_rng(1)
    prints, copies = [], []
    for k in range(60):
        n = int(rng.choice([1, 2, 9, 40, FRAMES]))
        values = rng.integers(0, 2**32, n, dtype=np.uint32)
        if k % 3 == 0 and n > 4:
            values[: n // 2] = values[0]  # a held tone: frames that are not informative
        if k % 4 == 1 and prints and len(prints[-1]) > 10:
            values = _flip(prints[-1][7:], rng, 0.03)  # a trimmed near-copy of the previous
            copies.append(k)
        prints.append(values)
    offsets = np.concatenate([[0], np.cumsum([len(v) for v in prints])]).astype(np.int64)
    values = np.concatenate(prints)
    i, j = np.triu_indices(len(prints), k=1)
    offset = rng.integers(-12, 12, len(i))
    i = np.concatenate([i, np.array(copies) - 1])  # and each near-copy at its true offset
    j = np.concatenate([j, copies])
    offset = np.concatenate([offset, np.full(len(copies), 7)])
    rates = best_rates(values, offsets, i, j, offset, min_frames=8)
    expected = [
        _best_alignment(prints[a], prints[b], int(o), 8)
        for a, b, o in zip(i.tolist(), j.tolist(), offset.tolist(), strict=True)
    ]
    np.testing.assert_allclose(rates, expected, rtol=0, atol=1e-12)
    assert (rates[-len(copies) :] < 0.1).all() and len(copies) >= 5
    assert (rates == 1.0).sum() > 100 and ((rates > 0.4) & (rates < 0.6)).sum() > 100


def _digests(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, (n, 32), dtype=np.uint8)


def test_exact_groups_need_every_sample_equal_and_survive_a_key_collision():
    rng = np.random.default_rng(0)
    a, b, silent = _digests(rng, 3), _digests(rng, 2), _digests(rng, 1)
    # Source 3's two hashes sum, word by word mod 2**64, to source 4's: same key, other audio.
    c1, c2, c3 = _digests(rng, 3)
    words = np.stack([c1, c2, c3]).view("<u8")  # (3, 4) 64-bit words
    c4 = (words[0] + words[1] - words[2]).view(np.uint8)  # uint64 arithmetic wraps
    rows = [
        (0, a[0]), (0, a[1]), (0, a[2]),  # source 0: a track
        (1, a[2]), (1, a[0]), (1, a[1]),  # source 1: its byte copy, listed in another order
        (2, a[0]), (2, a[1]),  # source 2: the track cut short
        (3, c1), (3, c2),
        (4, c3), (4, c4),
        (5, b[0]), (5, silent[0]),  # sources 5 and 6 share only a silent segment
        (6, b[1]), (6, silent[0]),
        (7, a[0]), (7, a[1]), (7, a[2]),  # another copy of source 0
    ]  # fmt: skip
    source = np.array([s for s, _ in rows])
    digests = np.stack([d for _, d in rows])
    assert exact_groups(source, digests, count=9) == [[0, 1, 7]]  # source 8 has no samples


def test_exact_groups_of_distinct_sources_are_empty():
    rng = np.random.default_rng(1)
    assert exact_groups(np.arange(50) % 10, _digests(rng, 50), count=10) == []


def test_merge_groups_joins_groups_sharing_a_source():
    assert merge_groups([[0, 4], [2, 3]], [[4, 9]], []) == [[0, 4, 9], [2, 3]]
    assert merge_groups([], []) == []
