"""Tests for musicoder/shardset/manifest.py and index.py: index round trip, order-independent
merge, stats, and reading a manifest back (typed fields, clear errors)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from musicoder.shardset.format import ShardFormatError
from musicoder.shardset.index import ShardSummary
from musicoder.shardset.manifest import (
    ManifestBuilder,
    check_preset,
    read_manifest,
    reject_fraction,
    rejects_jsonl,
)

CHANNELS = 6


def _summaries(seed: int, n: int = 7) -> tuple[list[ShardSummary], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    out, frames = [], []
    for i in range(n):
        split = "val" if i == n - 1 else "train"
        x = (rng.normal(3.0, 2.0, size=(int(rng.integers(0, 50)), CHANNELS))).astype(np.float16)
        wide = x.astype(np.float64)
        rejects = [{"uri": f"/bad{i}.wav", "reason": "r", "error": "E"}] if i % 3 == 0 else []
        out.append(
            ShardSummary(
                name=f"{'val' if split == 'val' else 'shard'}-{i:06d}.tar",
                split=split,
                samples=int(len(x) > 0) * 2,
                frames=len(x),
                seconds=len(x) * 0.0464,
                bytes=1024 * (i + 1),
                sha256="0" * 64,
                sum=wide.sum(0).tolist(),
                sumsq=(wide**2).sum(0).tolist(),
                count=len(x),
                accepted=1 if len(x) else 0,
                rejected=len(rejects),
                truncated=i % 2,
                rejects=rejects,
            )
        )
        frames.append(x)
    return out, frames


def _manifest(builder: ManifestBuilder) -> dict:
    m = builder.manifest(
        plan_rejects=2, preset="p", feature={}, channels=CHANNELS, fingerprint="f", config={}
    )
    m.pop("created")
    return m


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_merge_in_any_arrival_order_gives_identical_manifest(seed: int):
    summaries, frames = _summaries(seed)
    ordered = ManifestBuilder(len(summaries), CHANNELS)
    for i, s in enumerate(summaries):
        ordered.add(i, s)
    shuffled = ManifestBuilder(len(summaries), CHANNELS)
    for i in np.random.default_rng(seed).permutation(len(summaries)):
        assert not shuffled.complete
        shuffled.add(int(i), summaries[int(i)])
    assert shuffled.complete
    assert json.dumps(_manifest(ordered)) == json.dumps(_manifest(shuffled))
    # Stats equal a direct float64 computation over the train frames only.
    train = np.concatenate(
        [f for f, s in zip(frames, summaries, strict=True) if s.split == "train"]
    ).astype(np.float64)
    stats = _manifest(ordered)["stats"]
    assert stats["count"] == len(train)
    np.testing.assert_allclose(stats["mean"], train.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats["std"], train.std(0), rtol=1e-9)


def test_counts_add_up_and_empty_shards_are_not_listed():
    summaries, _ = _summaries(5)
    summaries[2].samples = summaries[2].frames = 0
    builder = ManifestBuilder(len(summaries), CHANNELS)
    for i, s in enumerate(summaries):
        builder.add(i, s)
    m = _manifest(builder)
    c = m["counts"]
    assert c["inputs"] == c["accepted"] + c["rejected"]
    assert c["rejected"] == 2 + sum(s.rejected for s in summaries)
    assert c["segments"] == sum(s.samples for s in summaries)
    listed = [e["name"] for e in m["train"] + m["val"]]
    assert listed == [s.name for s in summaries if s.samples]
    assert reject_fraction(c) == c["rejected"] / c["inputs"]
    assert len(builder.rejects) == sum(s.rejected for s in summaries)


def test_index_round_trip_and_rejects_jsonl():
    s = _summaries(0, n=2)[0][0]
    index = s.to_index(["k_00000", "k_00001"], [10, 12], [{"source": "a"}, {"source": "b"}])
    assert set(index) >= {
        "name",
        "split",
        "samples",
        "frames",
        "seconds",
        "bytes",
        "sha256",
        "keys",
        "sample_frames",
        "sum",
        "sumsq",
        "count",
        "files",
        "rejects",
    }
    back = ShardSummary.from_index(json.loads(json.dumps(index)))
    assert back == s
    with pytest.raises(ValueError, match="missing field"):
        ShardSummary.from_index({"name": "x"})
    text = rejects_jsonl([{"uri": "/ñ.wav", "reason": "r", "error": "E"}])
    assert text == '{"error": "E", "reason": "r", "uri": "/ñ.wav"}\n'


def test_preset_mismatch_is_refused(few_shard_set):
    manifest = read_manifest(str(few_shard_set))
    with pytest.raises(ValueError, match="logmel128"):
        check_preset(manifest, "logmel128", 128)
    check_preset(manifest, "musicoder324", 324)


def test_read_manifest_gives_typed_stats(few_shard_set):
    raw = json.loads((few_shard_set / "manifest.json").read_text())
    for uri in (str(few_shard_set), str(few_shard_set / "manifest.json")):
        manifest = read_manifest(uri)
        assert manifest.stats.to_dict() == {k: raw["stats"][k] for k in ("mean", "std")}
        assert manifest.stats.count == raw["stats"]["count"] and manifest.counts == raw["counts"]
        assert [r.uri for r in manifest.train][0] == str(few_shard_set / "shard-000000.tar")


def test_missing_and_malformed_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest"):
        read_manifest(str(tmp_path))
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ShardFormatError, match="manifest.json"):
        read_manifest(str(tmp_path / "manifest.json"))
