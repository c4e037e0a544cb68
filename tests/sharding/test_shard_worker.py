"""Tests for musicoder/sharding/worker.py, run without Ray: members, rejects, spooling, index."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fixtures_audio import AudioCases, write_tone

from musicoder import features
from musicoder.sharding.worker import ShardTask, process_shard
from musicoder.shardset.format import sample_key

SEGMENT = 2.5
GOOD = [
    "six_channels.wav",
    "hires_96k_24bit.flac",
    "name.with.dots and spaces ñ 音楽.ogg",
    "truncated.wav",
]
BAD = {
    "silence.flac": "SilentAudioError",  # raises only after a segment was yielded
    "one_second.wav": "TooShortError",
}


def _task(uris: list[str], output: Path | str, **kw) -> ShardTask:
    return ShardTask(
        index=0,
        name="shard-000007",
        split="train",
        output=str(output),
        uris=tuple(uris),
        preset="musicoder324",
        segment_seconds=SEGMENT,
        min_seconds=2.0,
        **kw,
    )


def _members(tar_path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(tar_path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]


@pytest.fixture(scope="module")
def worker_out(bad_audio_dir: AudioCases, tmp_path_factory: pytest.TempPathFactory):
    long = write_tone(tmp_path_factory.mktemp("long") / "seven.wav", 7.0, 44100, seed=3)
    uris = [str(bad_audio_dir[n].path) for n in GOOD[:2]] + [
        str(bad_audio_dir["silence.flac"].path)
    ]
    uris += [str(long)] + [str(bad_audio_dir[n].path) for n in GOOD[2:]]
    uris += [
        str(bad_audio_dir["one_second.wav"].path),
        str(bad_audio_dir.root / "deleted-after-planning.wav"),
    ]
    outs = [tmp_path_factory.mktemp("worker") for _ in range(2)]
    summaries = [process_shard(_task(uris, out, keep_audio=True, batch_segments=2)) for out in outs]
    return uris, outs, summaries, str(long)


def test_accepted_files_become_samples_in_fixed_member_order(worker_out, bad_audio_dir):
    uris, outs, (summary, _), long = worker_out
    accepted = [u for u in uris if u == long or Path(u).name in GOOD]
    # 3-3.6 s tracks: one 2.5 s segment (the tail is < min_seconds); 7 s: 2.5 + 2.5 + 2.0 s.
    keys = [sample_key(u, i) for u in accepted for i in range(3 if u == long else 1)]
    names = [n for n, _ in _members(outs[0] / "shard-000007.tar")]
    assert names == [f"{k}{ext}" for k in keys for ext in (".feat.npy", ".json", ".flac")]
    assert (summary.samples, summary.accepted, summary.truncated) == (len(keys), len(accepted), 1)


def test_rejects_leave_no_members(worker_out, bad_audio_dir):
    _, outs, (summary, _), _ = worker_out
    got = {r["uri"]: r["error"] for r in summary.rejects}
    assert got == {str(bad_audio_dir[n].path): e for n, e in BAD.items()} | {
        str(bad_audio_dir.root / "deleted-after-planning.wav"): "FileNotFoundError"
    }
    assert all(r["reason"] for r in summary.rejects)
    sources = {
        json.loads(d)["source"]
        for n, d in _members(outs[0] / "shard-000007.tar")
        if n.endswith(".json")
    }
    assert sources == {str(bad_audio_dir[n].path) for n in GOOD} | {worker_out[3]}


def test_sample_content_and_index(worker_out, bad_audio_dir):
    _, outs, (summary, _), _ = worker_out
    index = json.loads((outs[0] / "shard-000007.json").read_text())
    members = dict(_members(outs[0] / "shard-000007.tar"))
    tar_bytes = (outs[0] / "shard-000007.tar").read_bytes()
    assert index["sha256"] == hashlib.sha256(tar_bytes).hexdigest() and index["bytes"] == len(
        tar_bytes
    )
    assert index["name"] == "shard-000007.tar" and index["split"] == "train"
    feats = []
    for key, frames in zip(index["keys"], index["sample_frames"], strict=True):
        feat = np.load(io.BytesIO(members[f"{key}.feat.npy"]), allow_pickle=False)
        meta = json.loads(members[f"{key}.json"])
        audio, sr = sf.read(io.BytesIO(members[f"{key}.flac"]), dtype="float32")
        assert feat.dtype == np.float16 and feat.shape == (frames, 324) and np.isfinite(feat).all()
        assert meta["frames"] == frames == features.num_frames(len(audio))
        assert sr == meta["sample_rate"] == 22050 and len(audio) == round(meta["seconds"] * sr)
        assert key == sample_key(meta["source"], meta["segment"]) and "." not in key
        assert meta["source_sha1"] == hashlib.sha1(meta["source"].encode()).hexdigest()
        assert meta["offset"] == pytest.approx(meta["segment"] * SEGMENT)
        assert meta["truncated"] == meta["source"].endswith("truncated.wav")
        assert meta["preset"] == "musicoder324"
        feats.append(feat.astype(np.float64))
    allf = np.concatenate(feats)
    assert index["count"] == index["frames"] == len(allf)
    np.testing.assert_allclose(index["sum"], allf.sum(0), rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(index["sumsq"], (allf**2).sum(0), rtol=1e-9, atol=1e-6)
    assert index["files"] == {"accepted": 5, "rejected": 3, "truncated": 1}
    assert min(index["sample_frames"]) == features.num_frames(2 * 22050)  # the 2.0 s tail
    assert index["seconds"] == pytest.approx(summary.seconds)


def test_same_task_gives_byte_identical_shard(worker_out):
    _, outs, _, _ = worker_out
    for name in ("shard-000007.tar", "shard-000007.json"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes()
    assert sorted(p.name for p in outs[0].iterdir()) == ["shard-000007.json", "shard-000007.tar"]


def test_empty_shard_is_a_valid_empty_tar(tmp_path: Path, bad_audio_dir: AudioCases):
    summary = process_shard(_task([str(bad_audio_dir["zero_bytes.wav"].path)], tmp_path))
    assert (summary.samples, summary.accepted, summary.rejected) == (0, 0, 1)
    assert _members(tmp_path / "shard-000007.tar") == []
    assert json.loads((tmp_path / "shard-000007.json").read_text())["keys"] == []


@pytest.mark.integration
def test_s3_inputs_are_listed_and_processed_into_s3(s3_env: str, bad_audio_dir: AudioCases):
    from musicoder import storage
    from musicoder.sharding import ShardJobConfig
    from musicoder.sharding.plan import build_plan

    good, bad = bad_audio_dir["UPPER.WAV"].path, bad_audio_dir["text.flac"].path
    storage.write_file(f"{s3_env}/raw/a/UPPER.WAV", good)
    storage.write_file(f"{s3_env}/raw/b/text.flac", bad)
    storage.write_bytes(f"{s3_env}/raw/notes.md", b"not audio, not listed")
    storage.write_file(f"{s3_env}/lists/more.flac", good)
    storage.write_text(f"{s3_env}/lists/list.txt", "more.flac\n")  # relative to the list's prefix
    plan = build_plan(
        ShardJobConfig(
            inputs=[f"{s3_env}/raw", f"{s3_env}/lists/list.txt"], output="x", val_fraction=0.0
        )
    )
    assert sorted(u for s in plan.shards for u in plan.uris(s)) == [
        f"{s3_env}/lists/more.flac",
        f"{s3_env}/raw/a/UPPER.WAV",
        f"{s3_env}/raw/b/text.flac",
    ]
    shard = plan.shards[0]
    summary = process_shard(_task(plan.uris(shard), f"{s3_env}/out"))
    assert (summary.accepted, summary.rejected) == (2, 1)
    index = storage.read_json(f"{s3_env}/out/shard-000007.json")
    assert (
        index["sha256"]
        == hashlib.sha256(storage.read_bytes(f"{s3_env}/out/shard-000007.tar")).hexdigest()
    )
    assert index["rejects"][0]["uri"] == f"{s3_env}/raw/b/text.flac"
