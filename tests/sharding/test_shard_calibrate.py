"""Tests for musicoder/sharding/calibrate.py: plan-time bytes/s measured on a seeded sample.

The corpus is 22,050 Hz mono (the demo corpus's format): 4x fewer bytes per second than the
44.1 kHz stereo table for WAV and ~3x for FLAC, so uncalibrated shards hold ~3-4x the target.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fixtures_audio import write_tone

from musicoder.sharding import ShardJobConfig, calibrate
from musicoder.sharding.calibrate import INPUT_BYTES_PER_SECOND, calibrate_rates, measure_rate
from musicoder.sharding.plan import build_plan, estimate_seconds

SR = 22050
TRACKS = 16  # per extension
SHARD_MB = 0.3  # ~21 s of audio per shard at musicoder324


@pytest.fixture(scope="module")
def mono_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 WAV + 16 FLAC files, 22,050 Hz mono 16-bit, 3-9 s each, in two folders."""
    root = tmp_path_factory.mktemp("mono_corpus")
    rng = np.random.default_rng(0)
    for i in range(TRACKS):
        for ext in (".wav", ".flac"):
            path = root / f"d{i % 2}" / f"t{i:02d}{ext}"
            path.parent.mkdir(exist_ok=True)
            write_tone(path, float(rng.uniform(3.0, 9.0)), SR, seed=i)
    return root


def _cfg(root: Path, **kw) -> ShardJobConfig:
    values = {"inputs": [str(root)], "output": "unused", "shard_size_mb": SHARD_MB}
    return ShardJobConfig(**(values | {"val_fraction": 0.0} | kw))


def _shard_seconds(plan) -> list[tuple[float, float]]:
    """(estimated, real) audio seconds of every shard."""
    rates = plan.grouping["input_bytes_per_second"]
    out = []
    for shard in plan.shards:
        uris = plan.uris(shard)
        est = sum(estimate_seconds(u, Path(u).stat().st_size, rates) for u in uris)
        out.append((est, sum(sf.info(u).duration for u in uris)))
    return out


def test_calibration_makes_estimates_match_real_durations(mono_corpus: Path):
    table = build_plan(_cfg(mono_corpus, calibration_files=0))
    plan = build_plan(_cfg(mono_corpus))
    target = plan.grouping["target_seconds"]
    assert target == table.grouping["target_seconds"]
    report = plan.grouping["calibration"]
    assert report["files_per_extension"] == 8
    for ext in (".wav", ".flac"):
        entry = report["extensions"][ext]
        assert entry["calibrated"] and entry["sampled"] == entry["measured"] == 8
        assert entry["bytes_per_second"] == plan.grouping["input_bytes_per_second"][ext]
    assert plan.grouping["input_bytes_per_second"][".wav"] == 44_000  # 44,100 B/s, 2 digits
    assert table.grouping["calibration"]["extensions"] == {}
    assert table.grouping["input_bytes_per_second"] == INPUT_BYTES_PER_SECOND

    before = np.array([est / real for est, real in _shard_seconds(table)])
    after = _shard_seconds(plan)
    ratios = np.array([est / real for est, real in after])
    assert np.all(ratios > 0.75) and np.all(ratios < 1.25), ratios
    assert np.all(before < 0.4), before  # the table guesses ~3-4x too little audio
    # So calibrated shards hold about the target audio, table ones several times it.
    assert all(real <= 1.25 * target for est, real in after[:-1])
    assert sum(real for _, real in _shard_seconds(table)) / len(table.shards) > 2.5 * target
    assert len(plan.shards) >= 3 * len(table.shards)
    json.dumps(plan.to_json())


def test_plan_is_reproducible_and_independent_of_listing_order(mono_corpus: Path):
    inputs = [str(mono_corpus / "d0"), str(mono_corpus / "d1")]
    a = build_plan(_cfg(mono_corpus, inputs=inputs, seed=5))
    b = build_plan(_cfg(mono_corpus, inputs=inputs[::-1], seed=5))
    again = build_plan(_cfg(mono_corpus, inputs=inputs, seed=5))
    assert a.to_json() == again.to_json() and a.fingerprint == again.fingerprint
    assert a.grouping == b.grouping  # the sample is taken in the seeded order, not the listing's
    assert [a.uris(s) for s in a.shards] == [b.uris(s) for s in b.shards]
    off = build_plan(_cfg(mono_corpus, inputs=inputs, seed=5, calibration_files=0))
    assert off.fingerprint != a.fingerprint  # the key is part of the plan


def test_broken_samples_are_skipped_or_fall_back_to_the_table(
    mono_corpus: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    root = tmp_path / "mixed"
    shutil.copytree(mono_corpus / "d0", root)
    for path in root.glob("*.flac"):  # every FLAC is broken: the table rate is kept
        path.write_text("not audio\n" * 50)
    broken_wav = sorted(root.glob("*.wav"))[0]
    broken_wav.write_bytes(broken_wav.read_bytes()[:30])  # a cut header: one lost vote
    (root / "empty.wav").write_bytes(b"")  # never sampled (0 bytes)
    with caplog.at_level(logging.WARNING, logger=calibrate.__name__):
        plan = build_plan(_cfg(root))
    report = plan.grouping["calibration"]["extensions"]
    flac, wav = report[".flac"], report[".wav"]
    assert not flac["calibrated"] and flac["measured"] == 0 and flac["sampled"] == 8
    assert plan.grouping["input_bytes_per_second"][".flac"] == INPUT_BYTES_PER_SECOND[".flac"]
    assert flac["first_failure"]["uri"].endswith(".flac")
    assert "Format not recognised" in flac["first_failure"]["reason"]
    assert wav["calibrated"] and (wav["sampled"], wav["measured"]) == (8, 7)
    assert wav["first_failure"]["uri"] == str(broken_wav)
    assert plan.grouping["input_bytes_per_second"][".wav"] == 44_000
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "no readable .flac sample" in warned[0]
    assert flac["first_failure"]["uri"] in warned[0]
    planned = sorted(u for s in plan.shards for u in plan.uris(s))
    assert planned == sorted(str(p) for p in root.iterdir())  # broken files are still planned


def test_sample_skips_large_files_and_stops_scanning(
    mono_corpus: Path, monkeypatch: pytest.MonkeyPatch
):
    files = [(str(p), p.stat().st_size) for p in sorted(mono_corpus.rglob("*.wav"))]
    monkeypatch.setattr(calibrate, "SCAN_LIMIT", 5)
    rates, report = calibrate_rates(files, 3)
    assert report["extensions"][".wav"]["sampled"] == 3
    assert ".flac" not in report["extensions"]
    assert rates[".flac"] == INPUT_BYTES_PER_SECOND[".flac"]
    monkeypatch.setattr(calibrate, "MAX_SAMPLE_BYTES", min(s for _, s in files) - 1)
    rates, report = calibrate_rates(files, 3)
    assert report["extensions"][".wav"] == {
        "bytes_per_second": INPUT_BYTES_PER_SECOND[".wav"],
        "sampled": 0,
        "measured": 0,
        "table": INPUT_BYTES_PER_SECOND[".wav"],
        "calibrated": False,
    }


def test_measure_rate_of_known_formats(tmp_path: Path):
    stereo = write_tone(tmp_path / "cd.wav", 4.0, 44100, channels=2)
    assert measure_rate(str(stereo), stereo.stat().st_size) == pytest.approx(176_400, rel=1e-3)
    hires = write_tone(tmp_path / "hi.flac", 1.0, 96000, channels=2, subtype="PCM_24")
    assert measure_rate(str(hires), hires.stat().st_size) > 200_000
    empty = tmp_path / "header_only.wav"
    sf.write(empty, np.zeros((0, 1)), 8000)  # a valid header with 0 frames: no duration
    with pytest.raises(ValueError, match="implausible header duration 0 s"):
        measure_rate(str(empty), empty.stat().st_size)
    with pytest.raises(ValueError, match="calibration_files=-1"):
        ShardJobConfig(calibration_files=-1)


@pytest.mark.integration
def test_s3_samples_are_streamed(mono_corpus: Path, s3_env: str):
    from musicoder import storage

    for path in sorted(mono_corpus.rglob("*.flac"))[:4]:
        storage.write_file(f"{s3_env}/audio/{path.name}", path)
    storage.write_text(f"{s3_env}/audio/broken.flac", "not audio")
    plan = build_plan(ShardJobConfig(inputs=[f"{s3_env}/audio"], output="x", val_fraction=0.0))
    flac = plan.grouping["calibration"]["extensions"][".flac"]
    assert (flac["sampled"], flac["measured"]) == (5, 4)
    assert flac["first_failure"]["uri"] == f"{s3_env}/audio/broken.flac"
    assert 25_000 < flac["bytes_per_second"] < 35_000


def test_resume_reuses_the_measured_rates(mono_corpus: Path, tmp_path: Path):
    """A resume plans with the rates in the earlier plan.json, so sampled files that became
    unreadable since (same names and sizes) do not change the shards or the fingerprint."""
    corpus = tmp_path / "corpus"
    shutil.copytree(mono_corpus, corpus)
    first = build_plan(_cfg(corpus))
    for path in corpus.rglob("*.flac"):  # every FLAC now fails to decode, sizes unchanged
        path.write_bytes(b"\0" * path.stat().st_size)
    grouping = json.loads(json.dumps(first.to_json()["grouping"]))  # as read from plan.json
    resumed = build_plan(_cfg(corpus), reuse=grouping)
    assert resumed.fingerprint == first.fingerprint
    assert resumed.grouping["input_bytes_per_second"] == first.grouping["input_bytes_per_second"]
    fresh = build_plan(_cfg(corpus))  # measuring again falls back to the table for FLAC
    assert fresh.fingerprint != first.fingerprint


@pytest.mark.parametrize("rates", [{".wav": "fast"}, {".wav": 0}, {}, None])
def test_unusable_earlier_rates_are_measured_again(mono_corpus: Path, rates):
    fresh = build_plan(_cfg(mono_corpus))
    reused = build_plan(_cfg(mono_corpus), reuse={"input_bytes_per_second": rates})
    assert reused.fingerprint == fresh.fingerprint
