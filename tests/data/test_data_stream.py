"""Tests for musicoder/data/stream.py and collate.py: equal batch counts per rank,
seeded determinism, resume positions, persistent workers across epochs, CMVN, preset checks
and unreadable shards."""

from __future__ import annotations

import itertools
import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import musicoder.data.collate
import musicoder.data.stream
from musicoder.data.plan import derive_seed
from musicoder.data.stream import DataConfig, DataPosition, ShardStream, make_loader
from musicoder.shardset.format import ShardFormatError
from musicoder.shardset.manifest import read_manifest
from musicoder.model import MaskingConfig, draw_masks
from musicoder.model.masking import model_input

BATCH = 3


def _stream(root, *, rank=0, world=1, workers=0, seed=0, **data) -> ShardStream:
    cfg = DataConfig(
        manifest=str(root), num_workers=workers, max_frames=32, shuffle_buffer=8, **data
    )
    return ShardStream(
        read_manifest(str(root)),
        cfg,
        MaskingConfig(),
        rank=rank,
        world_size=world,
        batch_size=BATCH,
        seed=seed,
    )


def _collect(stream: ShardStream) -> list:
    return list(make_loader(stream))


def _in_process(stream: ShardStream, monkeypatch) -> list:
    """What a DataLoader with the stream's workers yields, computed in this process: each
    worker's batches, interleaved round robin as the DataLoader does."""
    per_worker = []
    for worker in range(stream.num_workers):
        info = SimpleNamespace(id=worker, num_workers=stream.num_workers)
        with monkeypatch.context() as m:
            for module in (musicoder.data.stream, musicoder.data.collate):
                m.setattr(module, "get_worker_info", lambda info=info: info)
            per_worker.append(list(stream))
    rounds = itertools.zip_longest(*per_worker)
    return [item for items in rounds for item in items if item is not None]


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x.features, y.features)
        and torch.equal(x.frame_source, y.frame_source)
        and torch.equal(x.ccm, y.ccm)
        and i.worker == j.worker
        for (x, i), (y, j) in zip(a, b)
    )


@pytest.mark.parametrize("fixture", ["uneven_shard_set", "few_shard_set"])
def test_every_rank_yields_the_same_number_of_batches(fixture, request):
    root = request.getfixturevalue(fixture)
    total = read_manifest(str(root)).counts["segments"] - 4  # minus val clips
    expected = total // (2 * BATCH)
    keys = []
    for rank in range(2):
        batches = _collect(_stream(root, rank=rank, world=2, workers=2))
        assert len(batches) == expected
        for batch, info in batches:
            assert batch.features.shape[0] == BATCH and batch.features.shape[2] == 324
            assert batch.features.shape[1] <= 32 and batch.valid.any(1).all()
            assert batch.masked_input is None and batch.cfm.any()  # built by model_input
            assert (batch.frame_source < 0).any() and batch.ccm.any()
        keys.append({info.worker for _, info in batches})
    assert keys == [{0, 1}, {0, 1}]


def test_streams_are_deterministic_and_seed_dependent(uneven_shard_set):
    a = _collect(_stream(uneven_shard_set, workers=2, seed=5))
    b = _collect(_stream(uneven_shard_set, workers=2, seed=5))
    c = _collect(_stream(uneven_shard_set, workers=2, seed=6))
    for (x, _), (y, _) in zip(a, b, strict=True):
        assert torch.equal(model_input(x), model_input(y)) and torch.equal(x.cfm, y.cfm)
    assert any(
        x.features.shape != z.features.shape or not torch.equal(x.features, z.features)
        for (x, _), (z, _) in zip(a, c)
    )


def test_epochs_differ_and_resume_replays_exactly(uneven_shard_set):
    stream = _stream(uneven_shard_set, workers=2, seed=1)
    stream.set_epoch(3)
    full = _collect(stream)
    consumed = [0, 0]
    for _, info in full[:5]:
        consumed[info.worker] = info.consumed
    resumed = _stream(uneven_shard_set, workers=2, seed=1)
    resumed.set_position(
        DataPosition(epoch=3, consumed=consumed, world_size=1, num_workers=2, batch_size=BATCH)
    )
    rest = _collect(resumed)
    assert len(rest) == len(full) - 5
    for (x, _), (y, _) in zip(full[5:], rest, strict=True):
        assert torch.equal(model_input(x), model_input(y))
    stream.set_epoch(4)
    assert not torch.equal(_collect(stream)[0][0].features[:, :8], full[0][0].features[:, :8])


def test_persistent_workers_follow_epochs_and_resume(uneven_shard_set, monkeypatch):
    stream = _stream(uneven_shard_set, workers=2, seed=2)
    loader = make_loader(stream)
    assert loader.persistent_workers
    epochs = []
    for epoch in (0, 1):
        stream.set_epoch(epoch)
        epochs.append(list(loader))  # the same two worker processes both times
        fresh = _stream(uneven_shard_set, workers=2, seed=2)
        fresh.set_epoch(epoch)
        assert _same(epochs[-1], _in_process(fresh, monkeypatch))
    assert not _same(epochs[0], epochs[1])
    consumed = [0, 0]
    for _, info in epochs[1][:3]:
        consumed[info.worker] = info.consumed
    stream.set_position(
        DataPosition(epoch=1, consumed=consumed, world_size=1, num_workers=2, batch_size=BATCH)
    )
    assert _same(list(loader), epochs[1][3:])  # resume mid-epoch, workers still the same
    stream.set_epoch(2)
    fresh = _stream(uneven_shard_set, workers=2, seed=2)
    fresh.set_epoch(2)
    assert _same(list(loader), _in_process(fresh, monkeypatch))


def test_loader_batches_carry_masks_drawn_from_their_seed(few_shard_set):
    stream = _stream(few_shard_set, workers=0)
    (batch, info), *_ = _collect(stream)
    gen = torch.Generator().manual_seed(derive_seed(stream.seed, 0, stream.rank, info.worker, 0))
    reference = draw_masks(batch, stream.masking, gen)
    assert batch.masked_input is None
    for name in ("cfm", "ccm", "frame_source"):
        assert torch.equal(getattr(batch, name), getattr(reference, name))


def test_position_maps_to_another_world_size(uneven_shard_set):
    stream = _stream(uneven_shard_set, workers=2)
    stream.set_position(
        DataPosition(epoch=2, consumed=[6, 3], world_size=2, num_workers=2, batch_size=BATCH)
    )
    # 2 ranks x 9 samples = 18 consumed; one rank of batch 3 skips 6 batches, 3 per worker
    assert stream.epoch == 2 and stream.skip == [9, 9]
    assert len(_collect(stream)) == stream.batches_per_epoch - 6


def test_cmvn_uses_manifest_stats(few_shard_set):
    manifest = read_manifest(str(few_shard_set))
    cfg = DataConfig(manifest=str(few_shard_set), num_workers=0, max_frames=1000, shuffle_buffer=0)
    stream = ShardStream(
        manifest, cfg, MaskingConfig(), rank=0, world_size=1, batch_size=23, seed=0, shuffle=False
    )
    ((batch, _),) = _collect(stream)
    frames = batch.features[batch.valid].double()  # all train frames, normalized
    assert frames.shape[0] == manifest.stats.count
    torch.testing.assert_close(
        frames.mean(0), torch.zeros(324, dtype=torch.float64), atol=2e-3, rtol=0
    )
    torch.testing.assert_close(
        frames.std(0), torch.ones(324, dtype=torch.float64), atol=2e-2, rtol=0
    )
    assert not torch.equal(model_input(batch), batch.features)


def test_unreadable_shard_is_skipped_and_counts_stay_equal(few_shard_set, tmp_path, caplog):
    root = tmp_path / "broken"
    shutil.copytree(few_shard_set, root)
    tar = root / "shard-000000.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 3])  # truncated mid-stream
    (root / "shard-000001.tar").write_bytes(b"not a tar at all" * 100)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["train"].append({"name": "shard-000002.tar", "samples": 4, "frames": 1, "bytes": 1})
    (root / "manifest.json").write_text(json.dumps(manifest))  # a listed shard that is missing
    expected = (14 + 9 + 4) // (2 * BATCH)
    skipped = []
    for rank in range(2):
        batches = _collect(_stream(root, rank=rank, world=2, workers=0))
        assert len(batches) == expected
        skipped.append(batches[-1][1].skipped_shards)
    assert min(skipped) >= 1 and sum(skipped) >= 3  # each rank hit one; all three were seen
    assert "skipping unreadable shard" in caplog.text


def test_no_readable_shard_raises(few_shard_set, tmp_path):
    root = tmp_path / "dead"
    shutil.copytree(few_shard_set, root)
    for tar in root.glob("shard-*.tar"):
        tar.write_bytes(b"\0" * 10)
    with pytest.raises(ShardFormatError, match="no readable samples"):
        _collect(_stream(root))


def test_bad_sample_is_skipped(tmp_path):
    from fixtures_training import write_shard_set

    root = write_shard_set(tmp_path / "mixed", [6], frames=(20, 30), seed=4)
    other = write_shard_set(tmp_path / "other", [6], frames=(20, 30), seed=4, preset="logmel128")
    shutil.copy(other / "shard-000000.tar", root / "shard-000001.tar")
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["train"].append({"name": "shard-000001.tar", "samples": 6, "frames": 1})
    (root / "manifest.json").write_text(json.dumps(manifest))
    batches = _collect(_stream(root))
    assert len(batches) == 12 // BATCH
    assert batches[-1][1].skipped_samples >= 1 and batches[-1][1].skipped_shards == 0


def test_window_pairs_crop_two_independent_windows_of_one_clip(few_shard_set):
    stream = _stream(few_shard_set, window_pairs=True)  # max_frames 32: windows of 16
    clip = np.arange(100, dtype=np.float16)[:, None].repeat(3, axis=1)  # row i holds i
    rng = np.random.default_rng(0)
    starts = []
    for _ in range(50):
        crop = stream._prepare(clip, rng)
        assert crop.shape == (32, 3)
        first, second = crop[:16, 0].astype(int), crop[16:, 0].astype(int)
        for window in (first, second):  # each window is one contiguous stretch of the clip
            assert (np.diff(window) == 1).all() and 0 <= window[0] <= 100 - 16
        starts.append((first[0], second[0]))
    assert any(b != a + 16 for a, b in starts) and any(b < a for a, b in starts)
    short = clip[:10]  # shorter than a window: whole, as without window pairs
    assert np.array_equal(stream._prepare(short, rng), short)
    plain = _stream(few_shard_set, window_pairs=True)
    plain.shuffle = False  # validation: the first max_frames, one stretch
    assert np.array_equal(plain._prepare(clip, rng)[:, 0], np.arange(32))


def test_data_config_validation():
    with pytest.raises(ValueError, match="data.max_frames"):
        DataConfig(max_frames=0)
    with pytest.raises(ValueError, match="data.window_pairs"):
        DataConfig(max_frames=31, window_pairs=True)
    assert np.isfinite(DataConfig().max_frames)
