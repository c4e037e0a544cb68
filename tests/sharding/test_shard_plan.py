"""Tests for musicoder/sharding/plan.py and inputs.py: listing, dedupe, order, val split, memory."""

from __future__ import annotations

import json
import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from fixtures_sharding import is_val

from musicoder.sharding import ShardJobConfig
from musicoder.sharding.inputs import iter_input
from musicoder.sharding.plan import (
    MISSING_REASON,
    TRAIN,
    VAL,
    FileTable,
    build_plan,
    estimate_seconds,
)


def _tree(root: Path, n: int = 40) -> list[str]:
    """Fake audio files (planning never decodes): sizes vary, extensions mixed."""
    exts = [".wav", ".flac", ".mp3", ".OGG"]
    uris = []
    for i in range(n):
        path = root / f"d{i % 3}" / f"f{i:03d}{exts[i % 4]}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * (20_000 + 3_701 * i))
        uris.append(str(path))
    (root / "notes.txt.bak").write_text("not audio")
    return uris


def _cfg(inputs: list[str], **kw) -> ShardJobConfig:
    return ShardJobConfig(inputs=inputs, output="unused", **({"shard_size_mb": 0.05} | kw))


def _shard_uris(plan) -> list[list[str]]:
    return [plan.uris(s) for s in plan.shards]


def test_file_table_round_trip_and_size():
    table = FileTable()
    uris = ["/a/b.wav", "s3://bucket/ñ 音楽.flac", "/c.mp3"]
    for i, u in enumerate(uris):
        assert table.append(u, i * 10) == i
    assert [table.uri(i) for i in range(3)] == uris
    assert [table.size(i) for i in range(3)] == [0, 10, 20]
    assert table.nbytes() == sum(len(u.encode()) for u in uris) + 3 * 16


def test_listing_symlinks_duplicates_and_case(tmp_path: Path):
    uris = _tree(tmp_path)
    os.symlink("../d0/f000.wav", tmp_path / "d1" / "dup.wav")  # same real file: dropped
    os.symlink("missing.wav", tmp_path / "dangling.wav")
    os.symlink("loop.mp3", tmp_path / "loop.mp3")
    os.symlink("..", tmp_path / "d2" / "up")  # directory symlink to the parent: not followed
    plan = build_plan(_cfg([str(tmp_path), str(tmp_path / "d0")]))  # overlapping inputs
    planned = sorted(u for shard in _shard_uris(plan) for u in shard)
    assert planned == sorted(uris)  # every real file once, upper-case extension included
    assert [r["uri"] for r in plan.rejects] == [
        str(tmp_path / "dangling.wav"),
        str(tmp_path / "loop.mp3"),
    ]
    assert {r["reason"] for r in plan.rejects} == {MISSING_REASON}
    assert plan.duplicates == 1 + 14  # the symlink + the overlap of d0 (files 0, 3, ..., 39)
    assert plan.num_inputs == len(uris) + 2


@pytest.mark.parametrize("seed", [0, 1, 7, 12345])
def test_order_is_seeded_and_independent_of_input_order(tmp_path: Path, seed: int):
    _tree(tmp_path)
    inputs = [str(tmp_path / "d0"), str(tmp_path / "d1"), str(tmp_path / "d2")]
    a = build_plan(_cfg(inputs, seed=seed))
    b = build_plan(_cfg(inputs[::-1], seed=seed))
    other = build_plan(_cfg(inputs, seed=seed + 1))
    assert _shard_uris(a) == _shard_uris(b)
    assert sorted(a.inputs) == sorted(b.inputs)
    flat_a = [u for s in _shard_uris(a) for u in s]
    flat_other = [u for s in _shard_uris(other) for u in s]
    assert flat_a != flat_other and sorted(flat_a) == sorted(flat_other)
    assert a.fingerprint != other.fingerprint


@pytest.mark.parametrize("seed", [0, 3])
def test_val_split_holds_out_whole_files_by_hash(tmp_path: Path, seed: int):
    _tree(tmp_path, n=200)
    plan = build_plan(_cfg([str(tmp_path)], val_fraction=0.25, seed=seed))
    val = {u for s in plan.shards if s.split == VAL for u in plan.uris(s)}
    train = {u for s in plan.shards if s.split == TRAIN for u in plan.uris(s)}
    assert not val & train
    assert val == {u for u in val | train if is_val(u, 0.25)}  # the same files whatever the seed
    assert 25 <= len(val) <= 75
    names = [s.name for s in plan.shards]
    assert names[0] == "shard-000000" and f"val-{0:06d}" in names
    assert all(s.split == TRAIN for s in plan.shards[: names.index("val-000000")])


def test_grouping_respects_target(tmp_path: Path):
    _tree(tmp_path, n=60)
    plan = build_plan(_cfg([str(tmp_path)], val_fraction=0.0))
    target, rates = plan.grouping["target_seconds"], plan.grouping["input_bytes_per_second"]
    assert len(plan.shards) > 3
    for shard in plan.shards:
        est = [
            estimate_seconds(plan.files.uri(int(i)), plan.files.size(int(i)), rates)
            for i in plan.order[shard.start : shard.stop]
        ]
        assert sum(est) <= target or len(est) == 1
    # Consecutive shards could not have been merged: the greedy rule filled each one.
    assert plan.to_json()["counts"]["train_shards"] == len(plan.shards)
    json.dumps(plan.to_json())  # plan.json is plain JSON


def test_fingerprint_tracks_inputs_and_config_but_not_execution(tmp_path: Path):
    uris = _tree(tmp_path)
    base = build_plan(_cfg([str(tmp_path)]))
    assert (
        build_plan(
            _cfg(
                [str(tmp_path)], max_in_flight=3, max_retries=0, num_cpus=1, max_reject_fraction=0.9
            )
        ).fingerprint
        == base.fingerprint
    )
    assert build_plan(_cfg([str(tmp_path)], segment_seconds=10.0)).fingerprint != base.fingerprint
    assert build_plan(_cfg([str(tmp_path)], keep_audio=True)).fingerprint != base.fingerprint
    Path(uris[5]).write_bytes(b"changed")
    assert build_plan(_cfg([str(tmp_path)])).fingerprint != base.fingerprint


def test_list_files_txt_and_csv(tmp_path: Path):
    uris = _tree(tmp_path, n=6)
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "a.txt").write_text(
        f"# comment\n../d0/f000.wav\n\n{uris[1]}\n../nope.wav\n", encoding="utf-8"
    )
    (tmp_path / "lists" / "b.csv").write_text(
        f"label,path,size\nx,{uris[2]},5\ny,s3://bucket/k/remote.flac,777\n", encoding="utf-8"
    )
    (tmp_path / "lists" / "c.csv").write_text(f"{uris[3]}\n{uris[4]},extra\n", encoding="utf-8")
    got = [
        pair
        for name in ("a.txt", "b.csv", "c.csv")
        for pair in iter_input(str(tmp_path / "lists" / name))
    ]
    size = [Path(u).stat().st_size for u in uris]
    assert got == [
        (uris[0], size[0]),
        (uris[1], size[1]),
        (str(tmp_path / "nope.wav"), -1),
        (uris[2], 5),
        ("s3://bucket/k/remote.flac", 777),  # sizes from the CSV: no stat, no request
        (uris[3], size[3]),
        (uris[4], size[4]),
    ]


def test_single_file_and_missing_inputs(tmp_path: Path):
    uris = _tree(tmp_path, n=2)
    assert list(iter_input(uris[1])) == [(uris[1], Path(uris[1]).stat().st_size)]
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        build_plan(_cfg([str(tmp_path / "nothing-here")]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no audio files"):
        build_plan(_cfg([str(tmp_path / "empty")]))


def test_every_decodable_extension_is_listed_and_other_files_refused(tmp_path: Path):
    """Regression: .opus/.aiff/.au were listed by embed and tasks but silently skipped here, and
    a single input file of another extension failed with a bare 'Not a directory'."""
    names = ["a.opus", "b.AIFF", "c.aif", "d.au", "e.oga", "f.Flac"]
    touched = [tmp_path / n for n in names + ["cover.jpg", "song.m4a"]]
    for path in touched:
        path.write_bytes(b"x" * 100)
    assert [uri for uri, _ in iter_input(str(tmp_path))] == [str(tmp_path / n) for n in names]
    with pytest.raises(ValueError, match=r"song\.m4a: not a folder, a list"):
        list(iter_input(str(tmp_path / "song.m4a")))


def _plan_peak(tmp_path: Path, n: int, *, traced: bool = True) -> int:
    lines = "".join(
        f"s3://corpus-bucket/collection/artist{i % 997:03d}/track-{i:07d}.mp3,{4_000_000 + i}\n"
        for i in range(n)
    )
    (tmp_path / f"big{n}.csv").write_text("uri,size\n" + lines, encoding="utf-8")
    if traced:
        tracemalloc.start()
    try:
        # No calibration: these objects do not exist (it would only try 8 and keep the table).
        plan = build_plan(
            _cfg([str(tmp_path / f"big{n}.csv")], shard_size_mb=256.0, calibration_files=0)
        )
        peak = tracemalloc.get_traced_memory()[1] if traced else 0
    finally:
        tracemalloc.stop()
    assert len(plan.order) == np.unique(plan.order).size == n
    return peak


def test_driver_memory_per_file_is_small(tmp_path: Path):
    """Millions of files must not need an object per file: the marginal planning peak per file
    (S3-like URIs of ~55 characters) stays under the 300-byte budget (measured: ~120).

    1 million such files planned in ~45 s with ~130 MB of extra RSS on the dev machine.
    """
    _plan_peak(
        tmp_path, 12_000, traced=False
    )  # one-time allocations (caches, imports) out of the way
    small, large = 2_000, 8_000
    # Best of two per size: a one-off allocation spike elsewhere must not decide the verdict.
    peak = {n: min(_plan_peak(tmp_path, n) for _ in range(2)) for n in (small, large)}
    per_file = (peak[large] - peak[small]) / (large - small)
    assert 0 < per_file <= 300, f"{per_file:.0f} bytes per file"
