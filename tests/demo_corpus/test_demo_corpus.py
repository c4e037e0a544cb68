"""Tests for musicoder/demo_corpus/: voices, plans and tags, determinism, files, labels, genres."""

from __future__ import annotations

import csv
import io
import itertools
import os
import pathlib
from collections import Counter

import numpy as np
import pytest
import soundfile as sf

from musicoder.demo_corpus import (
    FORMATS,
    GENRES,
    INSTRUMENTS,
    TAGS,
    generate_corpus,
    plan_track,
    render_stems,
    render_track,
    synth,
)
from musicoder.demo_corpus.styles import FAST_BPM, SLOW_BPM
from musicoder.demo_corpus.writer import assign_splits

SR = 22050
CORPUS = {"num_tracks": 24, "seconds": 4.0, "seed": 3, "sample_rate": SR}  # 4 per genre, 4 formats


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "corpus"
    return out, generate_corpus(str(out), **CORPUS)


def read_labels(root: pathlib.Path) -> list[dict[str, str]]:
    with open(root / "labels.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["path", "split", "label", "tags"]
        return list(reader)


def spectrum(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    power = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    return np.fft.rfftfreq(len(x), 1 / SR), power


@pytest.mark.parametrize("voice", ["piano", "strings", "synth", "vocal", "guitar", "bass"])
def test_pitched_voices_are_harmonic_at_their_pitch(voice):
    hz = synth.midi_to_hz(57)  # A3, 220 Hz
    note = synth.PITCHED[voice](hz, 1.0, SR, 0.7, np.random.default_rng(0))
    assert note.shape == (SR,) and np.isfinite(note).all() and 0.5 < np.abs(note).max() <= 1.0
    freqs, power = spectrum(note)
    harmonic = np.zeros_like(power, dtype=bool)
    for k in range(1, 40):  # +-2.5%: Karplus-Strong tunes to a whole-sample period
        harmonic |= np.abs(freqs - k * hz) < 0.025 * k * hz + 3
    assert power[harmonic].sum() > 0.9 * power.sum(), voice


def test_drum_voices_sit_in_their_bands():
    rng = np.random.default_rng(0)
    centroids = {}
    for name, hit in synth.DRUMS.items():
        freqs, power = spectrum(hit(0.5, SR, 0.5, rng))
        centroids[name] = (freqs * power).sum() / power.sum()
    assert centroids["kick"] < 300 < centroids["snare"] < centroids["hihat"]
    assert centroids["hihat"] > 4000


@pytest.mark.parametrize("genre", GENRES)
def test_tags_are_exactly_the_instruments_that_sound(genre):
    for seed in range(6):
        plan = plan_track(genre, seed)
        stems = render_stems(plan, 3.0, 11025)
        assert set(stems) == set(plan.instruments) and plan.instruments
        for tag, stem in stems.items():
            assert stem.shape == (33075,) and np.sqrt(np.mean(stem**2)) > 0.01, (genre, seed, tag)
        tags = plan.tags
        assert [t for t in tags if t in INSTRUMENTS] == [t for t in INSTRUMENTS if t in stems]
        assert ("fast" in tags) == (plan.tempo >= FAST_BPM)
        assert ("slow" in tags) == (plan.tempo < SLOW_BPM)
        assert set(tags) <= set(TAGS)


def test_render_track_is_deterministic_and_seeded():
    a, tags_a = render_track("jazz", 11, 3.0, SR)
    b, tags_b = render_track("jazz", 11, 3.0, SR)
    c, _ = render_track("jazz", 12, 3.0, SR)
    assert a.dtype == np.float32 and a.shape == (3 * SR,) and np.isfinite(a).all()
    assert np.array_equal(a, b) and tags_a == tags_b
    assert not np.allclose(a[: len(c)], c)
    assert 0.3 < np.abs(a).max() < 1.0
    high, tags = render_track("rock", 1, 2.5, 44100)  # 44.1 kHz works too, exact length
    assert high.shape == (110250,) and tags == plan_track("rock", 1).tags
    with pytest.raises(ValueError, match="genre"):
        plan_track("polka", 1)


def test_labels_csv_schema_and_stratified_splits(corpus):
    root, summary = corpus
    rows = read_labels(root)
    assert len(rows) == 24 and summary.num_tracks == 24 and not summary.reused
    assert [r["path"] for r in rows] == summary.files
    for row in rows:
        assert not os.path.isabs(row["path"]) and (root / row["path"]).is_file()
        assert row["split"] in {"train", "valid", "test"} and row["label"] in GENRES
        tags = row["tags"].split(";")
        assert tags and set(tags) <= set(TAGS) and len(set(tags)) == len(tags)
    per_genre = Counter((r["label"], r["split"]) for r in rows)
    for genre in GENRES:  # 4 tracks per genre: 2 train, 1 valid, 1 test
        assert [per_genre[genre, s] for s in ("train", "valid", "test")] == [2, 1, 1]
    assert summary.genres == dict.fromkeys(GENRES, 4)
    assert summary.tags == dict(Counter(t for r in rows for t in r["tags"].split(";")))
    assert summary.formats == dict.fromkeys(FORMATS, 6)
    assert summary.hours == pytest.approx(24 * 4.0 / 3600)


def test_splits_over_many_seeds():
    genres = [GENRES[i % 6] for i in range(6 * 20)] + ["rock", "jazz"]  # uneven counts
    for seed in range(10):
        splits = assign_splits(genres, seed)
        counts = Counter(zip(genres, splits))
        for genre in GENRES:
            n = genres.count(genre)
            assert counts[genre, "valid"] == counts[genre, "test"] == round(0.15 * n)
            assert sum(counts[genre, s] for s in ("train", "valid", "test")) == n
    assert assign_splits(["rock", "rock"], 0) == ["train", "train"]  # too few to hold out
    assert assign_splits(genres, 1) != assign_splits(genres, 2)


def test_every_file_decodes_to_the_stated_length(corpus):
    root, summary = corpus
    for rel in summary.files:
        info = sf.info(str(root / rel))
        samples, rate = sf.read(str(root / rel), dtype="float32")
        assert rate == SR and samples.ndim == 1 and info.channels == 1
        assert len(samples) == 4 * SR, rel  # lossy codecs too: no padding or trimming
        assert np.isfinite(samples).all() and 0.05 < np.abs(samples).max() <= 1.0


def test_regenerating_gives_identical_files(corpus, tmp_path):
    root, summary = corpus
    again = generate_corpus(str(tmp_path / "again"), **CORPUS, workers=2)  # same with 2 processes
    assert again.files == summary.files and again.tags == summary.tags
    assert (tmp_path / "again" / "labels.csv").read_text() == (root / "labels.csv").read_text()
    for rel in summary.files:
        first, second = root / rel, tmp_path / "again" / rel
        if rel.endswith((".wav", ".flac")):
            assert first.read_bytes() == second.read_bytes(), rel
        else:  # Ogg streams carry a random serial number: compare the decoded samples
            assert np.array_equal(sf.read(str(first))[0], sf.read(str(second))[0]), rel


def test_complete_corpus_is_reused_and_stale_tracks_removed(tmp_path):
    out = tmp_path / "c"
    params = {"seconds": 2.0, "seed": 5, "sample_rate": 16000}
    generate_corpus(str(out), num_tracks=8, **params)
    (out / "audio" / "notes.txt").write_text("not ours")
    stamp = (out / "audio" / "00000.wav").stat().st_mtime_ns
    reused = generate_corpus(str(out), num_tracks=8, **params)
    assert reused.reused and (out / "audio" / "00000.wav").stat().st_mtime_ns == stamp
    (out / "audio" / "00003.wav").unlink()  # incomplete: regenerated
    assert not generate_corpus(str(out), num_tracks=8, **params).reused
    smaller = generate_corpus(str(out), num_tracks=7, **params)
    assert not smaller.reused and len(read_labels(out)) == 7
    assert sorted(p.name for p in (out / "audio").iterdir()) == sorted(
        [pathlib.PurePath(f).name for f in smaller.files] + ["notes.txt"]
    )
    with pytest.raises(ValueError, match="num_tracks"):
        generate_corpus(str(out), num_tracks=0, **params)
    with pytest.raises(ValueError, match="sample_rate"):
        generate_corpus(str(out), num_tracks=1, seconds=2.0, seed=5, sample_rate=96000)


def spectral_stats(x: np.ndarray) -> np.ndarray:
    """Mean/std of 16 log band energies, spectral centroid and flux: 'simple' genre features."""
    frames = np.lib.stride_tricks.sliding_window_view(x, 2048)[::1024] * np.hanning(2048)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    freqs = np.fft.rfftfreq(2048, 1 / SR)
    edges = np.geomspace(40, SR / 2, 17)
    bands = np.stack(
        [power[:, (freqs >= a) & (freqs < b)].sum(1) for a, b in itertools.pairwise(edges)], 1
    )
    log_bands = np.log(bands + 1e-8)
    centroid = np.log((power * freqs).sum(1) / (power.sum(1) + 1e-9) + 1)
    flux = np.maximum(np.diff(log_bands, axis=0), 0).sum(1)
    return np.r_[
        log_bands.mean(0),
        log_bands.std(0),
        centroid.mean(),
        centroid.std(),
        flux.mean(),
        flux.std(),
    ]


def test_genres_learnable_but_not_trivially_separable():
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    per_genre = 20
    features, labels = [], []
    for genre in GENRES:
        for seed in range(per_genre):
            samples, _ = render_track(genre, 100 + seed, 6.0, SR)
            features.append(spectral_stats(samples))
            labels.append(genre)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    accuracy = cross_val_score(model, np.array(features), np.array(labels), cv=folds).mean()
    # Measured here: 0.66 (0.69 and 0.75 with seeds from 200 and 300); chance is 1/6 = 0.17.
    assert 0.45 < accuracy < 0.97, accuracy


@pytest.mark.integration
def test_corpus_on_s3_is_written_and_reused(s3_env):
    from musicoder import storage

    out = f"{s3_env}/demo/corpus"
    first = generate_corpus(out, num_tracks=8, seconds=2.0, seed=9, sample_rate=16000)
    assert not first.reused and first.labels == f"{out}/labels.csv"
    rows = list(csv.DictReader(io.StringIO(storage.read_text(first.labels))))
    assert [r["path"] for r in rows] == first.files
    for rel in first.files:
        samples, rate = sf.read(io.BytesIO(storage.read_bytes(f"{out}/{rel}")))
        assert rate == 16000 and len(samples) == 32000, rel
    assert generate_corpus(out, num_tracks=8, seconds=2.0, seed=9, sample_rate=16000).reused
