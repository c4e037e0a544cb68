"""Curation end to end on rendered music with planted duplicates (DESIGN §13).

One corpus is rendered once per module with the demo synthesizer (no downloads): an original
track and five copies of it (FLAC, 128 kbit/s MP3 in another folder, a byte copy under another
folder and name, trimmed by 5 s, 3 dB quieter, padded with 10 s of silence at both ends), a
different track with the same instruments, tempo, key and chords (must not be grouped), a
track of another genre, a mostly silent track, a hard-clipped one, and a 4 s jingle with a byte
copy (too short to fingerprint: found by its PCM hash). It is sharded by the
shipped job on the session's local Ray (format v2: facts in the worker's decode pass), then
curated through `launch/curate.py`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from musicoder.demo_corpus import render, styles
from musicoder.sharding import ShardJobConfig, run

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
RATE = 44100
SECONDS = 40.0
MP3_LEVEL = 0.65  # libsndfile's CBR compression level that gives 128 kbit/s
FAMILY = (
    "album/a-original.flac",
    "mp3/a-original.mp3",
    "backup/zz-renamed.flac",
    "album/a-trimmed.flac",
    "album/a-quieter.flac",
    "album/a-padded.flac",
)
JINGLE = ("stingers/fanfare.flac", "backup/fanfare-copy.flac")
OTHERS = (
    "album/b-same-band.flac",
    "other/c-jazz.flac",
    "other/d-mostly-silent.flac",
    "other/e-clipped.flac",
)


def _mix(plan: styles.TrackPlan) -> np.ndarray:
    mix = sum(render.render_stems(plan, SECONDS, RATE).values())
    return (mix / np.abs(mix).max() * 0.8).astype(np.float32)


def _write(path: Path, audio: np.ndarray, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio, RATE, **kw)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("curation_corpus")
    music = root / "music"
    plan = styles.plan_track("rock", 11)
    a = _mix(plan)
    _write(music / FAMILY[0], a)
    _write(music / FAMILY[1], a, format="MP3", bitrate_mode="CONSTANT", compression_level=MP3_LEVEL)
    (music / FAMILY[2]).parent.mkdir(parents=True)
    shutil.copyfile(music / FAMILY[0], music / FAMILY[2])
    _write(music / FAMILY[3], a[5 * RATE :])
    _write(music / FAMILY[4], a * 10 ** (-3 / 20))
    pad = np.zeros(10 * RATE, np.float32)
    _write(music / FAMILY[5], np.concatenate([pad, a, pad]))
    _write(music / OTHERS[0], _mix(dataclasses.replace(plan, seed=plan.seed + 1000)))
    _write(music / OTHERS[1], _mix(styles.plan_track("jazz", 12)))
    quiet = np.concatenate(
        [_mix(styles.plan_track("hiphop", 13))[: 20 * RATE], np.zeros(40 * RATE)]
    )
    _write(music / OTHERS[2], quiet.astype(np.float32))
    clipped = np.clip(_mix(styles.plan_track("electronic", 14)) * 20.0, -1.0, 1.0)
    _write(music / OTHERS[3], clipped)
    _write(music / JINGLE[0], _mix(styles.plan_track("electronic", 15))[: 4 * RATE])
    shutil.copyfile(music / JINGLE[0], music / JINGLE[1])
    return music


@pytest.fixture(scope="module")
def shards(corpus: Path, ray_local: str) -> Path:
    output = corpus.parent / "shards"
    cfg = ShardJobConfig(inputs=[str(corpus)], output=str(output), val_fraction=0.0)
    result = run(cfg, progress=False)
    assert result.exit_code == 0, result.summary
    return output


def _curate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "launch" / "curate.py"), "--no-progress", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def curated(shards: Path) -> Path:
    out = shards.parent / "clean"
    done = _curate(
        "--input",
        str(shards),
        "--output",
        str(out),
        "--dedup",
        "--max-silence",
        "0.5",
        "--max-clipped",
        "0.01",
    )
    assert done.returncode == 0, done.stderr
    return out


def _pairs(groups: list[list[str]]) -> set[frozenset[str]]:
    return {frozenset(p) for g in groups for p in itertools.combinations(g, 2)}


@pytest.mark.timeout(600)
def test_mp3_is_128k(corpus: Path):
    info = sf.info(corpus / FAMILY[1])
    kbps = (corpus / FAMILY[1]).stat().st_size * 8 / info.duration / 1000
    assert 120 < kbps < 136


@pytest.mark.timeout(600)
def test_planted_duplicates_grouped_with_full_precision_and_recall(corpus: Path, curated: Path):
    report = json.loads((curated / "report.json").read_text())
    groups = report["duplicate_groups"]
    truth = _pairs([[str(corpus / f) for f in FAMILY], [str(corpus / f) for f in JINGLE]])
    found = _pairs(groups)
    precision = len(found & truth) / max(len(found), 1)
    recall = len(found & truth) / len(truth)
    print(f"duplicate pairs: precision {precision:.3f}, recall {recall:.3f}")
    assert (precision, recall) == (1.0, 1.0), groups
    family, jingle = sorted(range(2), key=lambda g: len(groups[g]), reverse=True)
    kept = Path(groups[family][0]).relative_to(corpus).as_posix()
    assert kept in (FAMILY[0], FAMILY[2], FAMILY[4]), kept  # full length, lossless, no padding
    assert report["groups"][family]["exact"] is False  # the mp3 decodes to other samples
    assert report["groups"][jingle]["exact"] is True
    assert report["matching"]["matching_pairs"] >= 5


@pytest.mark.timeout(600)
def test_view_excludes_copies_and_bad_audio_with_reasons(corpus: Path, shards: Path, curated: Path):
    view = json.loads((curated / "view.json").read_text())
    report = json.loads((curated / "report.json").read_text())
    assert view["format"] == "musicoder-view" and view["format_version"] == 1
    (source,) = view["sources"]
    manifest = shards / "manifest.json"
    assert source["uri"] == str(manifest.resolve())
    assert source["sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    reasons: dict[str, str] = {}
    for shard, keys in source["excluded"].items():
        index = json.loads((shards / shard.replace(".tar", ".json")).read_text())
        where = dict(zip(index["keys"], index["sample_facts"], strict=True))
        for key, reason in keys.items():
            fact = where[key]
            reasons.setdefault(Path(fact["source"]).relative_to(corpus).as_posix(), reason)
            if reason == "silence":
                assert fact["silent_fraction"] > 0.5
            if reason == "clipped":
                assert fact["clipped_fraction"] > 0.01
    kept = {g[0] for g in report["duplicate_groups"]}
    copies = {f for f in (*FAMILY, *JINGLE) if str(corpus / f) not in kept}
    assert len(copies) == len(FAMILY) - 1 + len(JINGLE) - 1
    assert {f for f, r in reasons.items() if r == "duplicate"} == copies
    assert reasons.get(OTHERS[2]) == "silence"  # its silent tail segment only
    assert reasons.get(OTHERS[3]) == "clipped"
    assert OTHERS[0] not in reasons and OTHERS[1] not in reasons
    removed = report["removed"]
    assert removed["duplicate"]["samples"] == sum(
        n for r, n in view["counts"]["excluded"].items() if r == "duplicate"
    )
    assert removed["duplicate"]["hours"] > 5 * 35 / 3600  # five copies of >= 35 s
    assert (
        report["kept"]["samples"] + sum(v["samples"] for v in removed.values())
        == report["input"]["samples"]
    )


@pytest.mark.timeout(600)
def test_rerun_is_idempotent_and_help_has_examples(shards: Path, curated: Path):
    before = {p.name: p.read_bytes() for p in curated.iterdir()}
    done = _curate(
        "--input",
        str(shards),
        "--output",
        str(curated),
        "--dedup",
        "--max-silence",
        "0.5",
        "--max-clipped",
        "0.01",
    )
    assert done.returncode == 0 and "up to date" in done.stdout, done.stdout + done.stderr
    assert {p.name: p.read_bytes() for p in curated.iterdir()} == before
    helped = _curate("--help")
    assert "--dedup" in helped.stdout and "python launch/curate.py --input" in helped.stdout
